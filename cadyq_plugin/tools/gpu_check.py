"""One-shot acceptance of the CUDA path on the first GPU: runs every check and writes one markdown report.

    basicsr gpu-check                      # CUDA, full sizes, report gpu_check_report.md (< 8 min on an H100)
    basicsr gpu-check --device cpu --quick # every check that does not need CUDA, tiny sizes (what CI runs)

Each check runs in a process of its own with a time limit (a crash, a CUDA error or a hang is reported for that
check and the others still run) and returns a markdown section; the whole run keeps to ``--budget`` seconds
(a check that no longer fits is reported as skipped). Checks are the functions of :data:`CHECKS`, in order; add
one by writing ``def check_<name>(ctx) -> str`` (in ``gpu_check_network.py`` if it runs in the check's process, in
``gpu_check_runs.py`` if it runs ``basicsr`` commands) and listing it there. ``ctx`` (:class:`Context`) holds the device,
the sizes (``--quick``), a work folder and the check's own time limit.

What is measured is described in ``docs/distributed_and_gpus.md``.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass

from cadyq_plugin.tools.gpu_check_network import (CheckFailed, check_forward_backward, check_golden, check_host_syncs,
                                                  check_profile, check_versions, table)
from cadyq_plugin.tools.gpu_check_runs import check_benchmark, check_inference, check_torchrun, check_train_resume

DEFAULT_BUDGET = 420  # seconds: leaves a minute of the 8 to spare on one H100


@dataclass
class Context:
    """What a check gets: ``device`` (``cuda`` or ``cpu``), ``quick`` (tiny sizes), ``workdir`` (shared by the
    checks of one run), ``seconds`` (the check's time limit)."""
    device: str
    quick: bool
    workdir: str
    seconds: float

    @property
    def cuda(self):
        return self.device == 'cuda'


# (name, function, the share of the budget it may take at most); all run on the CPU too, with tiny sizes
CHECKS = [
    ('versions', check_versions, 0.05),
    ('forward_backward', check_forward_backward, 0.15),
    ('host_syncs', check_host_syncs, 0.10),
    ('profile', check_profile, 0.10),
    ('golden', check_golden, 0.05),
    ('train_resume', check_train_resume, 0.35),
    ('torchrun', check_torchrun, 0.25),
    ('inference', check_inference, 0.10),
    ('benchmark', check_benchmark, 0.45),
]


# ------------------------------------------------------------------------------------------------ the runner
def run_check(name, ctx):
    """Run one check in this process: ``(status, markdown)``, status ``ok`` or ``FAILED``."""
    function = dict((n, f) for n, f, _ in CHECKS)[name]
    try:
        import cadyq_plugin  # noqa: F401  (its import-time fixes come before anything imports basicsr)
        from cadyq_plugin.determinism import apply_determinism
        apply_determinism(None)  # what a run gets by default
        return 'ok', function(ctx)
    except CheckFailed as failure:
        return 'FAILED', str(failure)
    except Exception:  # noqa: BLE001 (any failure of a check is its result)
        return 'FAILED', f'```\n{traceback.format_exc()[-4000:]}\n```'


def run_isolated(name, ctx):
    """Run one check in a process of its own, killed at ``ctx.seconds``; ``(status, markdown)``."""
    result_path = os.path.join(ctx.workdir, f'{name}.json')
    command = [sys.executable, '-m', 'cadyq_plugin.cli', 'gpu-check', '--run-check', name, '--device', ctx.device,
               '--workdir', ctx.workdir, '--seconds', str(ctx.seconds)] + (['--quick'] if ctx.quick else [])
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=ctx.seconds + 30)
    except subprocess.TimeoutExpired:
        return 'FAILED', f'timed out after {ctx.seconds:.0f} s (its time limit)'
    if proc.returncode != 0 or not os.path.exists(result_path):
        return 'FAILED', f'the check\'s process ended with exit status {proc.returncode}:\n\n```\n' \
                         f'{(proc.stdout + proc.stderr)[-3000:]}\n```'
    with open(result_path) as f:
        result = json.load(f)
    return result['status'], result['markdown']


def run_checks(checks, device, quick, workdir, budget, isolate=True, log=print, clock=time.time):
    """Run ``checks`` (names) within ``budget`` seconds of ``clock``, each in a process of its own unless not
    ``isolate`` (then a check's time limit is not enforced); return the report (markdown)."""
    start = clock()
    summary, sections = [], []
    for name in checks:
        share = dict((n, s) for n, _, s in CHECKS)[name]
        left = budget - (clock() - start)
        seconds = min(share * budget, left)
        if seconds < min(15.0, 0.05 * budget):  # too little left to start a process and do anything
            status, markdown, took = 'skipped', f'skipped: {left:.0f} s of the {budget:.0f} s budget left', 0.0
        else:
            log(f'[gpu_check] {name} (at most {seconds:.0f} s) ...')
            ctx = Context(device, quick, workdir, seconds)
            check_start = clock()
            status, markdown = run_isolated(name, ctx) if isolate else run_check(name, ctx)
            took = clock() - check_start
        log(f'[gpu_check] {name}: {status} ({took:.0f} s)')
        summary.append((name, status, f'{took:.0f}'))
        doc = (dict((n, f) for n, f, _ in CHECKS)[name].__doc__ or '').strip()
        sections.append(f'## {name}\n\n{doc}\n\n{markdown}')
    header = (f'# GPU acceptance report\n\n`basicsr gpu-check --device {device}'
              f'{" --quick" if quick else ""}` on {platform.node()}, {time.strftime("%Y-%m-%d %H:%M")}, '
              f'{clock() - start:.0f} s of a {budget:.0f} s budget.\n\n')
    return header + table(['check', 'result', 's'], summary) + '\n\n' + '\n\n'.join(sections) + '\n'


def build_parser():
    parser = argparse.ArgumentParser(prog='basicsr gpu-check', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', choices=['cuda', 'cpu'], default='cuda')
    parser.add_argument('--out', default='gpu_check_report.md', help='the markdown report')
    parser.add_argument('--quick', action='store_true', help='tiny sizes (what CI runs with --device cpu)')
    parser.add_argument('--budget', type=float, default=DEFAULT_BUDGET, help='seconds for all checks together')
    parser.add_argument('--only', nargs='+', choices=[name for name, _, _ in CHECKS], help='run these checks only')
    parser.add_argument('--workdir', help='work folder (default: a new temporary one)')
    parser.add_argument('--run-check', help=argparse.SUPPRESS)  # one check, in the process run_isolated starts
    parser.add_argument('--seconds', type=float, help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix='gpu_check_'))
    os.makedirs(workdir, exist_ok=True)
    if args.run_check:
        status, markdown = run_check(args.run_check, Context(args.device, args.quick, workdir, args.seconds))
        with open(os.path.join(workdir, f'{args.run_check}.json'), 'w') as f:
            json.dump({'status': status, 'markdown': markdown}, f)
        return 0
    if args.device == 'cuda':
        import torch
        if not torch.cuda.is_available():
            parser.error('--device cuda: no CUDA GPU is visible here (use --device cpu for the checks without CUDA)')
    report = run_checks(args.only or [name for name, _, _ in CHECKS], args.device, args.quick, workdir, args.budget)
    with open(args.out, 'w') as f:
        f.write(report)
    print(f'[gpu_check] report: {os.path.abspath(args.out)} (work folder {workdir})')
    return 0
