"""The quickstart: FP -> PAMS -> CADyQ through ``basicsr train`` on a small set built from scikit-image
photos, then ``basicsr test`` of each stage and a table of PSNR, SSIM, FAB and BitOPs.

It runs the repository's reference options files with only data paths, sizes and iteration counts changed. Each
``basicsr`` process runs with one intra-op thread unless ``OMP_NUM_THREADS`` says otherwise: on a 2-core machine
that other work keeps busy, two OpenMP threads spin-wait against the other processes and each iteration takes
5-10 times longer, while on an idle machine one thread costs only about 1.4x.
"""
import argparse
import contextlib
import csv
import logging
import os
import re
import sys
import time

from cadyq_plugin.errors import UserError
from cadyq_plugin.tools.derive_options import derive_options, load_options
from cadyq_plugin.tools.logged_run import run_logged

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPTIONS = os.path.join(REPO, 'options')
STAGES = ('fp', 'pams', 'cadyq')
# backbone -> (training options prefix, image-wise test options)
BACKBONE_OPTIONS = {
    'edsr': ('train_edsrbaseline', 'test_edsrbaseline_cadyq_image.yml'),
    'carn': ('train_carn', 'test_carn_cadyq_image.yml'),
    'idn': ('train_idn', 'test_idn_cadyq_image.yml'),
    'srresnet': ('train_srresnet', 'test_srresnet_cadyq_image.yml'),
}
PROGRESS_LINES = 10  # progress lines per training stage
# BasicSR's training log line: "[name..][epoch:  1, iter:      30, lr:(...)] [eta: 0:00:29, time (data): ...]"
_ITER_LINE = re.compile(r'\biter:\s*(\d+),.*\[eta: ([^,\]]+)')


class QuickstartError(UserError, RuntimeError):
    """A quickstart step failed; the message names the command and its log."""


def stage_overrides(data, stage, iters, batch, gt_size):
    """Option changes that turn a reference training file into a quickstart run."""
    overrides = {
        'datasets.train.dataroot_gt': str(data['train_gt_lmdb']),
        'datasets.train.dataroot_lq': str(data['train_lq_lmdb']),
        'datasets.train.gt_size': gt_size,
        'datasets.train.batch_size_per_gpu': batch,
        'datasets.train.num_worker_per_gpu': 0,  # decoding tiny crops needs no extra process on a busy machine
        'datasets.val.name': 'quickstart_val',
        'datasets.val.dataroot_gt': str(data['val_gt']),
        'datasets.val.dataroot_lq': str(data['val_lq']),
        'train.total_iter': iters,
        'train.scheduler.milestones': [iters * 2 // 3],
        'val.val_freq': iters,
        'logger.print_freq': max(1, iters // PROGRESS_LINES),
        'logger.save_checkpoint_freq': iters,
    }
    if stage != 'fp':
        overrides['network_g.calib_iters'] = max(1, iters // 10)
    if stage == 'cadyq':  # compress the growth of the bit-loss weight into the short run
        overrides['train.bit_opt.growth_every'] = max(1, iters // 10)
    return overrides


def test_overrides(data, stage, train_opt_path, test_opt_path, name):
    """Option changes that turn a reference test file into the test of one quickstart stage."""
    train_opt = load_options(train_opt_path)
    metrics = load_options(test_opt_path)['val']['metrics']
    if stage == 'fp':  # an FP network has no quantized activations: no FAB
        metrics = {k: v for k, v in metrics.items() if v['type'] != 'calculate_avg_bit'}
    return {
        'name': name,
        'datasets': {'test_1': {'name': 'quickstart_val', 'type': 'CADyQPairedImageDataset',
                                'dataroot_gt': str(data['val_gt']), 'dataroot_lq': str(data['val_lq']),
                                'filename_tmpl': '{}', 'io_backend': {'type': 'disk'}}},
        'network_g': dict(train_opt['network_g']),
        'path.pretrain_network_g': f'experiments/{train_opt["name"]}/models/net_g_latest.pth',
        'val.metrics': metrics,
    }


def thread_env():
    """The environment of the ``basicsr`` processes: one intra-op thread unless the user chose otherwise."""
    env = dict(os.environ)
    env.setdefault('OMP_NUM_THREADS', '1')
    env.setdefault('MKL_NUM_THREADS', env['OMP_NUM_THREADS'])
    return env


def progress_printer(label, total, out=sys.stdout):
    """A log-line callback that prints ``<label>: <iter>/<total> iterations, ETA <eta>`` for BasicSR's lines."""

    def on_line(line):
        match = _ITER_LINE.search(line)
        if match:
            print(f'[quickstart] {label}: {int(match.group(1))}/{total} iterations, ETA {match.group(2).strip()}',
                  file=out, flush=True)

    return on_line


def run_basicsr(command, cwd, log_path, env, on_line=None):
    """Run ``basicsr <command>`` in ``cwd`` with its output in ``log_path``; return its wall time in seconds."""
    start = time.time()
    status = run_logged([sys.executable, '-m', 'cadyq_plugin.cli'] + command, log_path, on_line, cwd=cwd, env=env)
    if status != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise QuickstartError(f'`basicsr {" ".join(command)}` failed (exit {status}); full log {log_path}:\n{tail}')
    return time.time() - start


def read_mean_row(csv_path):
    with open(csv_path) as f:
        rows = list(csv.reader(f))
    header, mean = rows[0], rows[-1]
    return dict(zip(header, mean))


def format_table(arch, rows):
    lines = [f'\n{arch} x4 on the quickstart validation images (Y-channel PSNR/SSIM, BitOPs per image):',
             '| stage | PSNR (dB) | SSIM | FAB | BitOPs (G) |', '|---|---:|---:|---:|---:|']
    for stage, mean in rows:
        fab = mean.get('FAB') or '32 (FP)'
        lines.append(f'| {stage} | {mean["PSNR (dB)"]} | {mean["SSIM"]} | {fab} | {mean["BitOPs (G)"]} |')
    return '\n'.join(lines)


def format_times(phases):
    """The wall-time table: ``phases`` is a list of (phase, seconds, note); the total is added."""
    lines = ['\nwall time per phase:', '| phase | s | |', '|---|---:|---|']
    lines += [f'| {phase} | {seconds:.0f} | {note} |' for phase, seconds, note in phases]
    lines.append(f'| total | {sum(seconds for _, seconds, _ in phases):.0f} | |')
    return '\n'.join(lines)


def build_data(workdir):
    """Build (or reuse) the data set, its log in ``<workdir>/data.log``; return (paths, reused)."""
    from cadyq_plugin.data.outputs import StaleOutputError
    from cadyq_plugin.data.quickstart_data import build_quickstart_data, quickstart_paths
    root = os.path.join(workdir, 'data')
    reused = all(path.exists() for path in quickstart_paths(root).values())
    data_logger = logging.getLogger('cadyq_plugin.data')
    level = data_logger.level
    with open(os.path.join(workdir, 'data.log'), 'w') as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        handler = logging.StreamHandler(log)
        data_logger.addHandler(handler)
        data_logger.setLevel(logging.INFO)
        try:
            data = build_quickstart_data(root)
        except StaleOutputError as err:
            raise QuickstartError(f'{err}\nThe quickstart always builds the same set: delete {root} (or pass '
                                  'another --workdir) to build it again') from err
        finally:
            data_logger.removeHandler(handler)
            data_logger.setLevel(level)
    return data, reused


def run_quickstart(args, phases):
    """Data, then train and test each stage; fills ``phases`` with (phase, seconds, note) as it goes."""
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    env = thread_env()
    print(f'[quickstart] everything goes to {workdir}; each basicsr process runs with OMP_NUM_THREADS='
          f'{env["OMP_NUM_THREADS"]}', flush=True)
    start = time.time()
    data, reused = build_data(workdir)
    note = 'reused (up to date)' if reused else 'built'
    phases.append(('data', time.time() - start, note))
    print(f'[quickstart] data: {note}: {workdir}/data ({phases[-1][1]:.0f} s)', flush=True)
    prefix, test_file = BACKBONE_OPTIONS[args.arch]
    rows = []
    for stage, iters in zip(STAGES, args.iters):
        train_opt = os.path.join(workdir, 'options', f'{prefix}_{stage}.yml')
        derive_options(os.path.join(OPTIONS, f'{prefix}_{stage}.yml'),
                       stage_overrides(data, stage, iters, args.batch, args.gt_size), train_opt)
        log = os.path.join(workdir, f'train_{stage}.log')
        print(f'[quickstart] {stage}: basicsr train -opt {os.path.relpath(train_opt, workdir)} ({iters} iterations, '
              f'log {os.path.relpath(log, workdir)})', flush=True)
        seconds = run_basicsr(['train', '-opt', train_opt], workdir, log, env, progress_printer(stage, iters))
        phases.append((f'{stage} train', seconds, f'{iters} iterations'))
        print(f'[quickstart] {stage}: trained in {seconds:.0f} s', flush=True)

        name = f'quickstart_{args.arch}_{stage}'
        test_opt = os.path.join(workdir, 'options', f'test_{args.arch}_{stage}.yml')
        test_base = os.path.join(OPTIONS, test_file)
        derive_options(test_base, test_overrides(data, stage, train_opt, test_base, name), test_opt)
        seconds = run_basicsr(['test', '-opt', test_opt], workdir, os.path.join(workdir, f'test_{stage}.log'), env)
        phases.append((f'{stage} test', seconds, ''))
        print(f'[quickstart] {stage}: basicsr test -opt {os.path.relpath(test_opt, workdir)}: {seconds:.0f} s',
              flush=True)
        rows.append((stage, read_mean_row(os.path.join(workdir, 'results', name, 'quickstart_val_results.csv'))))
    return rows


def process_start_time():
    """When this process began (``time.time()`` scale), for the start phase: Python's start and the plugin's
    imports (torch, basicsr) come before any of this module runs. Linux's ``/proc``; elsewhere, now."""
    try:
        with open('/proc/self/stat') as f:
            start_ticks = int(f.read().rsplit(')', 1)[1].split()[19])  # field 22: start time after boot, in ticks
        with open('/proc/uptime') as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return time.time()
    return time.time() - (uptime - start_ticks / os.sysconf('SC_CLK_TCK'))


def build_parser():
    parser = argparse.ArgumentParser(prog='basicsr quickstart', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--arch', choices=sorted(BACKBONE_OPTIONS), default='edsr')
    parser.add_argument('--workdir', default='quickstart_workdir', help='everything is written under here')
    parser.add_argument('--iters', type=int, nargs=3, default=(200, 100, 150), metavar=('FP', 'PAMS', 'CADYQ'))
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--gt-size', type=int, default=48, help='HR training patch size')
    parser.add_argument('--install-seconds', type=float, help='wall time of the install, for the summary (given by '
                        'scripts/quickstart.sh)')
    return parser


def main(argv=None):
    started = process_start_time()
    args = build_parser().parse_args(argv)
    phases = [] if args.install_seconds is None else [('install', args.install_seconds, '')]
    phases.append(('start (python, imports)', time.time() - started, ''))
    try:
        rows = run_quickstart(args, phases)
    except QuickstartError as err:
        print(f'[quickstart] {err}', file=sys.stderr)
        print(format_times(phases))
        return 1
    print(format_table(args.arch, rows))
    print(format_times(phases))
    return 0

