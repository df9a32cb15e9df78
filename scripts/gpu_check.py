"""One-shot acceptance of the CUDA path on the first GPU: runs every check and writes one markdown report.

    python scripts/gpu_check.py                      # CUDA, full sizes, report gpu_check_report.md (< 8 min on an H100)
    python scripts/gpu_check.py --device cpu --quick # every check that does not need CUDA, tiny sizes (what CI runs)

Each check runs in a process of its own with a time limit (a crash, a CUDA error or a hang is reported for that
check and the others still run) and returns a markdown section; the whole run keeps to ``--budget`` seconds
(a check that no longer fits is reported as skipped). Checks are the functions of :data:`CHECKS`, in order; add
one by writing ``def check_<name>(ctx) -> str`` and listing it there. ``ctx`` (:class:`Context`) holds the device,
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


class CheckFailed(Exception):
    """Raised by a check with its markdown when what it checks does not hold."""


def _table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    return '\n'.join(lines + ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows])


def _torch_device(ctx):
    import torch
    return torch.device('cuda', torch.cuda.current_device()) if ctx.cuda else torch.device('cpu')


def _sync(device):
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------ the networks
def networks(ctx):
    """The four CADyQ archs and the wrapper on BasicSR's EDSR and RCAN, at their sizes (tiny with ``--quick``)."""
    channels = {'num_in_ch': 3, 'num_out_ch': 3}
    if ctx.quick:
        return {
            'EDSR_CADyQ': {'type': 'EDSR_CADyQ', 'num_feat': 8, 'num_block': 2, 'upscale': 2},
            'CARN_CADyQ': {'type': 'CARN_CADyQ', 'num_feat': 16, 'num_block': 2, 'num_res_block': 2, 'upscale': 2},
            'IDN_CADyQ': {'type': 'IDN_CADyQ', 'num_feat': 32, 'd': 8, 's': 4, 'num_block': 2, 'upscale': 2},
            'SRResNet_CADyQ': {'type': 'SRResNet_CADyQ', 'num_feat': 8, 'num_block': 2, 'upscale': 2},
            'CADyQWrapper(EDSR)': {'type': 'CADyQWrapper', 'backbone': {
                'type': 'EDSR', **channels, 'num_feat': 8, 'num_block': 2, 'upscale': 2}},
            'CADyQWrapper(RCAN)': {'type': 'CADyQWrapper', 'backbone': {
                'type': 'RCAN', **channels, 'num_feat': 16, 'num_group': 1, 'num_block': 2, 'upscale': 2}},
        }
    return {
        'EDSR_CADyQ': {'type': 'EDSR_CADyQ'}, 'CARN_CADyQ': {'type': 'CARN_CADyQ'}, 'IDN_CADyQ': {'type': 'IDN_CADyQ'},
        'SRResNet_CADyQ': {'type': 'SRResNet_CADyQ'},
        'CADyQWrapper(EDSR)': {'type': 'CADyQWrapper', 'backbone': {
            'type': 'EDSR', **channels, 'num_feat': 64, 'num_block': 16, 'upscale': 4}},
        'CADyQWrapper(RCAN)': {'type': 'CADyQWrapper', 'backbone': {
            'type': 'RCAN', **channels, 'num_feat': 64, 'num_group': 10, 'num_block': 20, 'upscale': 4}},
    }


def _scale(network):
    return network.get('upscale') or network.get('backbone', {}).get('upscale') or 4


# ------------------------------------------------------------------------------------------------ the checks
def check_versions(ctx):
    """Versions, the GPU and the numerics flags."""
    import basicsr
    import torch

    import cadyq_plugin
    from cadyq_plugin.determinism import DEFAULTS
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO, capture_output=True, text=True)
    rows = [('python', platform.python_version()), ('torch', torch.__version__), ('CUDA (torch build)',
            torch.version.cuda), ('cuDNN', torch.backends.cudnn.version()), ('basicsr', basicsr.__version__),
            ('cadyq_plugin', f'{cadyq_plugin.__file__} ({commit.stdout.strip() or "no git"})'),
            ('host', f'{platform.node()}, {os.cpu_count()} CPUs')]
    if ctx.cuda:
        props = torch.cuda.get_device_properties(0)
        rows += [('GPU', f'{props.name}, compute capability {props.major}.{props.minor}, '
                  f'{props.total_memory / 2**30:.1f} GiB'), ('visible GPUs', torch.cuda.device_count()),
                 ('NCCL', '.'.join(map(str, torch.cuda.nccl.version())) if isinstance(
                     torch.cuda.nccl.version(), tuple) else torch.cuda.nccl.version())]
    rows += [('PyTorch defaults', f'cudnn.benchmark {torch.backends.cudnn.benchmark}, cuDNN conv precision '
              f'{torch.backends.cudnn.conv.fp32_precision}, matmul precision '
              f'{torch.backends.cuda.matmul.fp32_precision}'),
             ('plugin policy (default)', ', '.join(f'{k} {v}' for k, v in DEFAULTS.items()))]
    return _table(['', ''], rows)


def check_forward_backward(ctx):
    """Forward and backward of each arch and mode on the device: outputs there, every parameter a gradient."""
    import torch
    from basicsr.archs import build_network

    import cadyq_plugin  # noqa: F401
    from cadyq_plugin.quant import set_calibration
    device = _torch_device(ctx)
    rows, failures = [], 0
    for name, network in networks(ctx).items():
        for mode in ('fp', 'pams', 'cadyq'):
            torch.manual_seed(0)
            net = build_network(dict(network, quant_mode=mode)).to(device).train()
            for calibrating in (True, False):
                set_calibration(net, calibrating)
                net.zero_grad(set_to_none=True)
                lq = torch.rand(2, 3, 12 if ctx.quick else 24, 12 if ctx.quick else 24, device=device)
                sr, aux = net(lq, return_aux=True)
                loss = sr.abs().mean() + aux['weighted_bits'].sum() + sum(f.square().mean() for f in aux['feats'])
                loss.backward()
                outputs = [sr, aux['body'], aux['bits'], aux['weighted_bits'], *aux['feats']]
                off_device = sum(t.device != device for t in outputs)
                missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
                failures += bool(off_device or missing)
                rows.append((name, mode, 'yes' if calibrating else 'no', tuple(sr.shape), off_device,
                             len(missing) or 'none'))
    markdown = _table(['arch', 'mode', 'calibrating', 'output', 'outputs off the device', 'params without grad'], rows)
    if failures:
        raise CheckFailed(f'{failures} cases on {device} with outputs off the device or parameters without a gradient'
                          f'\n\n{markdown}')
    return f'Every output on {device}, every parameter with a gradient.\n\n{markdown}'


def check_host_syncs(ctx):
    """Steps of every stage with ``torch.cuda.set_sync_debug_mode('warn')`` and the plugin's host-sync counter."""
    import warnings

    import torch

    from cadyq_plugin.tools.host_syncs import (STAGES, count_step_syncs, move_model, run_steps, stage_model,
                                               training_batches)
    device = _torch_device(ctx)
    rows, details = [], []
    for stage in STAGES:
        model = move_model(stage_model(stage, tempfile.mkdtemp(dir=ctx.workdir)), device)
        batches = training_batches(6, pinned=ctx.cuda)
        run_steps(model, batches[:3], first_iter=1)  # warm-up: optimizer state, the calibrating step
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            if ctx.cuda:
                torch.cuda.set_sync_debug_mode('warn')
            try:
                counter = count_step_syncs(model, batches[3:], first_iter=4)
                _sync(device)
            finally:
                if ctx.cuda:
                    torch.cuda.set_sync_debug_mode('default')
        sync_warnings = [str(w.message).splitlines()[0] for w in caught if 'synchroniz' in str(w.message)]
        rows.append((stage, counter.count('read'), counter.count('to_host'), counter.count('to_device'),
                     sum(e.non_blocking for e in counter.events if e.kind == 'to_device'), len(sync_warnings)))
        if counter.events or sync_warnings:
            details.append(f'**{stage}**\n\n' + _table(['kind', 'where', 'count'], [
                row.strip('|').split('|') for row in counter.table()]) +
                ''.join(f'\n- sync warning: `{w}`' for w in sorted(set(sync_warnings))))
    note = '' if ctx.cuda else '\n\nOn the CPU nothing can wait for a device: this only exercises the check.'
    unexpected = [row[0] for row in rows if row[0] != 'budget' and (row[1] or row[2] or row[5] or row[3] != row[4])]
    markdown = ('Three steps of each stage after three warm-up steps (batch 2, a tiny EDSR_CADyQ); expected: 0 reads, '
            '0 copies to the host, 6 copies to the device (the batches, non_blocking), 0 sync warnings. The budget '
            'stage\'s syncs are removed by another change.' + note + '\n\n' +
            _table(['stage', 'reads', 'to host', 'to device', 'non_blocking', 'sync warnings'], rows) +
            ('\n\n' + '\n\n'.join(details) if details else ''))
    if unexpected:
        raise CheckFailed(f'host syncs in the steps of {", ".join(unexpected)}\n\n{markdown}')
    return markdown


def check_profile(ctx):
    """Kernels per step and the device's busy time against the wall time (profiler), EDSR-baseline, batch 16."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from cadyq_plugin.tools.host_syncs import STAGES, move_model, run_steps, stage_model, training_batches
    device = _torch_device(ctx)
    network = ({'type': 'EDSR_CADyQ', 'num_feat': 8, 'num_block': 2, 'upscale': 2} if ctx.quick else
               {'type': 'EDSR_CADyQ', 'upscale': 4})
    batch, lq_size, steps = (2, 8, 2) if ctx.quick else (16, 48, 5)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.cuda else [])
    rows = []
    for stage in STAGES[:3]:
        model = move_model(stage_model(stage, tempfile.mkdtemp(dir=ctx.workdir), network), device)
        batches = training_batches(steps + 3, batch, lq_size, _scale(network), pinned=ctx.cuda)
        run_steps(model, batches[:3], first_iter=1)
        _sync(device)
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            run_steps(model, batches[3:], first_iter=4)
            _sync(device)
            wall = (time.perf_counter() - start) / steps
        events = prof.events()
        if ctx.cuda:
            device_events = sum(e.device_type == torch.autograd.DeviceType.CUDA for e in events) or sum(
                len(e.kernels) for e in events)  # kernels, copies and fills
            busy = sum(e.self_device_time_total for e in prof.key_averages()) / 1e6 / steps  # microseconds
            rows.append((stage, device_events // steps, f'{busy * 1e3:.1f}', f'{wall * 1e3:.1f}',
                         f'{100 * busy / wall:.0f} %'))
        else:
            ops = [e for e in events if e.name.startswith('aten::')]
            rows.append((stage, len(ops) // steps, '-', f'{wall * 1e3:.1f}', '-'))
    header = (['stage', 'GPU operations / step', 'GPU busy ms / step', 'wall ms / step', 'busy / wall'] if ctx.cuda else
              ['stage', 'aten ops / step', '-', 'wall ms / step', '-'])
    return (f'{network["type"]} {network.get("num_feat", 64)} features, batch {batch}, LR {lq_size}x{lq_size}, '
            f'{steps} profiled steps after 3 warm-up steps; wall time under the profiler.\n\n' + _table(header, rows))


def check_golden(ctx):
    """The golden vectors (converted original EDSR-baseline CADyQ) on the CPU and on the device, TF32 off and on."""
    import torch

    import cadyq_plugin  # noqa: F401
    from cadyq_plugin.archs import EDSR_CADyQ
    from cadyq_plugin.convert import convert_state_dict
    from cadyq_plugin.determinism import apply_determinism
    golden = torch.load(os.path.join(REPO, 'tests', 'data', 'reference', 'edsr_cadyq_golden.pt'), weights_only=True)
    net = EDSR_CADyQ(quant_mode='cadyq')
    converted, _ = convert_state_dict(golden['state_dict'], net, 'EDSR_CADyQ', 'cadyq', 4)
    net.load_state_dict(converted, strict=True)
    net.eval()
    lq = golden['input_0_255'] / 255.0

    def run(device, tf32):
        apply_determinism({'tf32': tf32, 'cudnn_benchmark': False})
        with torch.no_grad():
            sr, aux = net.to(device)(lq.to(device), return_aux=True)
        return (sr * 255).cpu(), aux['bits'].cpu()

    cpu_sr, cpu_bits = run(torch.device('cpu'), False)
    reference_bits = golden['selector_bits'].float()
    rows = [('CPU', '-', int((cpu_bits != reference_bits).sum()), f'{(cpu_sr - golden["sr_0_255"]).abs().max():.2e}',
             '-')]
    if ctx.cuda:
        for tf32 in (False, True):
            sr, bits = run(_torch_device(ctx), tf32)
            rows.append(('CUDA', 'on' if tf32 else 'off', int((bits != reference_bits).sum()),
                         f'{(sr - golden["sr_0_255"]).abs().max():.2e}', f'{(sr - cpu_sr).abs().max():.2e}'))
    apply_determinism(None)
    if rows[0][2]:
        raise CheckFailed(f'the CPU does not reproduce the reference bits\n\n{_table(["device"], rows)}')
    return (f'{reference_bits.numel()} selector choices (8 patches x {reference_bits.shape[1]} selectors) and the '
            'SR output on 0..255 against the original implementation\'s; the CPU reproduces them exactly.\n\n' +
            _table(['device', 'TF32', 'bits unlike the reference', 'max |output - reference|',
                    'max |output - CPU output|'], rows))


def _stage_options(ctx, data, stage, iters, name, extra=None):
    """The repository's EDSR-baseline options of ``stage`` for a short run on the quickstart data."""
    from cadyq_plugin.tools.derive_options import derive_options
    from cadyq_plugin.tools.quickstart import OPTIONS, stage_overrides
    overrides = stage_overrides(data, stage, iters, 2 if ctx.quick else 8, 32 if ctx.quick else 96)
    overrides.update({'name': name, 'num_gpu': 1 if ctx.cuda else 0, 'logger.use_tb_logger': False,
                      'val.val_freq': 10**6})
    if stage != 'fp':  # the previous stage of this run
        previous = f'experiments/gpu_check_{"fp" if stage == "pams" else "pams"}/models/net_g_latest.pth'
        overrides.update({'path.pretrain_network_g': previous, 'path.pretrain_network_t': previous})
    if ctx.quick:
        overrides.update({'network_g.num_feat': 8, 'network_g.num_block': 2})
        if stage != 'fp':
            overrides.update({'network_t.num_feat': 8, 'network_t.num_block': 2})
    overrides.update(extra or {})
    path = os.path.join(ctx.workdir, 'options', f'{name}.yml')
    derive_options(os.path.join(OPTIONS, f'train_edsrbaseline_{stage}.yml'), overrides, path)
    return path


def _basicsr(ctx, args, log_name, deadline, launcher=None, env=None):
    """Run ``basicsr <args>`` (through ``launcher`` if given) in the work folder; return (status, seconds, log)."""
    from cadyq_plugin.tools.quickstart import thread_env
    log = os.path.join(ctx.workdir, f'{log_name}.log')
    command = (launcher or [sys.executable, '-m', 'cadyq_plugin.cli']) + args
    start = time.time()
    with open(log, 'w') as out:
        try:
            status = subprocess.run(command, cwd=ctx.workdir, stdout=out, stderr=subprocess.STDOUT,
                                    env=dict(thread_env(), **(env or {})),
                                    timeout=max(1.0, deadline - time.time())).returncode
        except subprocess.TimeoutExpired:
            status = 'timeout'
    return status, time.time() - start, log


def _tail(log, lines=15):
    with open(log) as f:
        return '\n'.join(f.read().splitlines()[-lines:])


def _weights(ctx, name):
    import torch
    return torch.load(os.path.join(ctx.workdir, 'experiments', name, 'models', 'net_g_latest.pth'),
                      weights_only=True)['params']


def check_train_resume(ctx):
    """``basicsr train`` of the three stages (num_gpu 1), then an interrupted stage 3 resumed with --auto_resume
    against an uninterrupted one (deterministic algorithms on CUDA)."""
    from cadyq_plugin.tools.quickstart import build_data
    deadline = time.time() + ctx.seconds
    data, _ = build_data(ctx.workdir)
    iters = 2 if ctx.quick else 20
    rows, failed = [], []
    for stage in ('fp', 'pams', 'cadyq'):
        status, seconds, log = _basicsr(ctx, ['train', '-opt', _stage_options(ctx, data, stage, iters,
                                                                            f'gpu_check_{stage}')], stage, deadline)
        rows.append((f'{stage}: basicsr train, {iters} iterations', status, f'{seconds:.0f}'))
        if status != 0:
            raise CheckFailed(_table(['run', 'exit status', 's'], rows) + f'\n\n{stage}: exit {status}\n\n```\n'
                              f'{_tail(log)}\n```')
    extra = {'logger.save_checkpoint_freq': iters, 'train.scheduler.milestones': [iters]}
    if ctx.cuda:
        extra['determinism'] = {'deterministic_algorithms': True, 'cudnn_benchmark': False}
    opt = {name: _stage_options(ctx, data, 'cadyq', 2 * iters, name, extra)
           for name in ('gpu_check_resumed', 'gpu_check_uninterrupted')}
    runs = [('stage 3 to the first checkpoint', 'gpu_check_resumed',
             ['--force_yml', f'train:total_iter={iters}']),
            ('stage 3 continued with --auto_resume', 'gpu_check_resumed', ['--auto_resume']),
            ('stage 3 uninterrupted', 'gpu_check_uninterrupted', [])]
    for label, name, args in runs:
        status, seconds, log = _basicsr(ctx, ['train', '-opt', opt[name]] + args, f'{name}_{len(rows)}', deadline)
        rows.append((label, status, f'{seconds:.0f}'))
        if status != 0:
            failed.append(f'{label}: exit {status}\n\n```\n{_tail(log)}\n```')
        elif args == ['--auto_resume'] and f'iter: {iters}.' not in open(log).read():
            failed.append(f'{label}: the log does not say it resumed from iteration {iters}')
    result = _table(['run', 'exit status', 's'], rows)
    if not failed:
        resumed, reference = _weights(ctx, 'gpu_check_resumed'), _weights(ctx, 'gpu_check_uninterrupted')
        differ = [k for k in reference if not (resumed[k] == reference[k]).all()]
        largest = max(float((resumed[k].float() - reference[k].float()).abs().max()) for k in reference)
        result += (f'\n\nResumed against uninterrupted ({"deterministic algorithms" if ctx.cuda else "CPU"}): '
                   f'{len(differ)} of {len(reference)} tensors differ, largest difference {largest:.2e} '
                   f'({"bit-identical" if not differ else "NOT bit-identical"}).')
        if differ:
            failed.append('the resumed run does not end with the weights of the uninterrupted one')
    if failed:
        raise CheckFailed(result + '\n\n' + '\n\n'.join(failed))
    return result


def check_torchrun(ctx):
    """torchrun: one nccl process; two processes sharing one GPU with gloo; two nccl processes on one GPU must be
    refused with a clear message (on the CPU: two gloo processes)."""
    from cadyq_plugin.tools.quickstart import build_data
    deadline = time.time() + ctx.seconds
    data, _ = build_data(ctx.workdir)
    iters = 2 if ctx.quick else 10
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone']
    cases = [('2 processes, gloo', 2, 'gloo', 0)]
    if ctx.cuda:
        cases = [('1 process, nccl', 1, 'nccl', 0)] + cases + [('2 processes on 1 GPU, nccl (refused)', 2, 'nccl', 1)]
    rows, notes = [], []
    for label, processes, backend, expected in cases:
        name = f'gpu_check_torchrun_{processes}_{backend}'
        opt = _stage_options(ctx, data, 'fp', iters, name, {'dist_params': {'backend': backend}})
        status, seconds, log = _basicsr(
            ctx, ['train', '-opt', opt, '--launcher', 'pytorch'], name, deadline,
            launcher=torchrun + [f'--nproc_per_node={processes}', '--no-python', sys.executable, '-m',
                                 'cadyq_plugin.cli'], env={'CUDA_VISIBLE_DEVICES': '0'} if ctx.cuda else None)
        text = open(log).read()
        ok = status == 0 if expected == 0 else (status not in (0, 'timeout') and 'nccl needs one GPU per process'
                                                in text)
        rows.append((label, status, f'{seconds:.0f}', 'as expected' if ok else 'UNEXPECTED'))
        if not ok:
            notes.append(f'{label}:\n\n```\n{_tail(log)}\n```')
    markdown = _table(['run', 'exit status', 's', ''], rows)
    if notes:
        raise CheckFailed(markdown + '\n\n' + '\n\n'.join(notes))
    return markdown


def check_inference(ctx):
    """Image-wise inference of an LR 1920x1080 image (time, peak memory) and patch-wise throughput."""
    import torch
    from basicsr.archs import build_network

    import cadyq_plugin  # noqa: F401
    from cadyq_plugin.inference import super_resolve
    device = _torch_device(ctx)
    network = ({'type': 'EDSR_CADyQ', 'num_feat': 8, 'num_block': 2, 'upscale': 2} if ctx.quick else
               {'type': 'EDSR_CADyQ', 'upscale': 4})
    net = build_network(dict(network, quant_mode='cadyq')).to(device).eval()
    height, width = (64, 96) if ctx.quick else (1080, 1920)
    lq = torch.rand(1, 3, height, width, device=device)
    rows = []
    for label, patchwise in (('image-wise', None), ('patch-wise 96/90, batch 64', {'patch': 96, 'step': 90,
                                                                                     'batch': 64})):
        if ctx.quick and patchwise:
            patchwise = {'patch': 24, 'step': 20, 'batch': 4}
        super_resolve(net, lq, patchwise)  # warm-up (cuDNN's algorithm search)
        _sync(device)
        if ctx.cuda:
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        result = super_resolve(net, lq, patchwise)
        _sync(device)
        seconds = time.perf_counter() - start
        peak = f'{torch.cuda.max_memory_allocated(device) / 2**20:.0f}' if ctx.cuda else '-'
        rate = f'{len(result.forwards) / seconds:.1f}' if patchwise else '-'
        rows.append((label, f'{seconds:.3f}', peak, len(result.forwards), rate))
    return (f'{network["type"]} x{network["upscale"]} (cadyq), LR {width}x{height}.\n\n' +
            _table(['inference', 's', 'peak MiB', 'forward passes', 'patches / s'], rows))


def check_benchmark(ctx):
    """``scripts/benchmark.py --device <device>`` (its own tables)."""
    args = [sys.executable, os.path.join(REPO, 'scripts', 'benchmark.py'), '--device', ctx.device]
    if ctx.quick:
        args += ['--archs', 'EDSR_CADyQ', '--batch', '2', '--patch', '32', '--repeats', '1', '--warmup', '0',
                 '--infer-lr', '16', '--skip', 'patchwise', 'memory', 'backends', 'backend-memory']
    else:
        args += ['--repeats', '3', '--skip', 'backends', 'backend-memory']
    try:
        proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=ctx.seconds)
        out, status = proc.stdout + proc.stderr[-2000:] * (proc.returncode != 0), proc.returncode
    except subprocess.TimeoutExpired as err:
        out, status = (err.stdout or b'').decode() if isinstance(err.stdout, bytes) else (err.stdout or ''), 'timeout'
    if status != 0:
        raise RuntimeError(f'benchmark exit status {status}:\n{out[-3000:]}')
    return f'`{" ".join(args[1:])}`\n\n```\n{out.strip()}\n```'


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
    command = [sys.executable, os.path.abspath(__file__), '--run-check', name, '--device', ctx.device, '--workdir',
               ctx.workdir, '--seconds', str(ctx.seconds)] + (['--quick'] if ctx.quick else [])
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
    header = (f'# GPU acceptance report\n\n`python scripts/gpu_check.py --device {device}'
              f'{" --quick" if quick else ""}` on {platform.node()}, {time.strftime("%Y-%m-%d %H:%M")}, '
              f'{clock() - start:.0f} s of a {budget:.0f} s budget.\n\n')
    return header + _table(['check', 'result', 's'], summary) + '\n\n' + '\n\n'.join(sections) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', choices=['cuda', 'cpu'], default='cuda')
    parser.add_argument('--out', default='gpu_check_report.md', help='the markdown report')
    parser.add_argument('--quick', action='store_true', help='tiny sizes (what CI runs with --device cpu)')
    parser.add_argument('--budget', type=float, default=DEFAULT_BUDGET, help='seconds for all checks together')
    parser.add_argument('--only', nargs='+', choices=[name for name, _, _ in CHECKS], help='run these checks only')
    parser.add_argument('--workdir', help='work folder (default: a new temporary one)')
    parser.add_argument('--run-check', help=argparse.SUPPRESS)  # one check, in the process run_isolated starts
    parser.add_argument('--seconds', type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, REPO)
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


if __name__ == '__main__':
    sys.exit(main())
