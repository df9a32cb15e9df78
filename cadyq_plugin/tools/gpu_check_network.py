"""The checks of ``basicsr gpu-check`` that run in the check's process: versions, forward and backward of every
arch and mode, host syncs, the profile and the golden vectors; and what every check shares (:class:`CheckFailed`,
the markdown table, the device). :data:`cadyq_plugin.tools.gpu_check.CHECKS` lists them."""
import os
import platform
import subprocess
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class CheckFailed(Exception):
    """Raised by a check with its markdown when what it checks does not hold."""


def table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    return '\n'.join(lines + ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows])


def torch_device(ctx):
    import torch
    return torch.device('cuda', torch.cuda.current_device()) if ctx.cuda else torch.device('cpu')


def sync(device):
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
    return table(['', ''], rows)


def check_forward_backward(ctx):
    """Forward and backward of each arch and mode on the device: outputs there, every parameter a gradient."""
    import torch
    from basicsr.archs import build_network

    import cadyq_plugin  # noqa: F401
    from cadyq_plugin.quant import set_calibration
    device = torch_device(ctx)
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
    markdown = table(['arch', 'mode', 'calibrating', 'output', 'outputs off the device', 'params without grad'], rows)
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
    device = torch_device(ctx)
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
                sync(device)
            finally:
                if ctx.cuda:
                    torch.cuda.set_sync_debug_mode('default')
        sync_warnings = [str(w.message).splitlines()[0] for w in caught if 'synchroniz' in str(w.message)]
        rows.append((stage, counter.count('read'), counter.count('to_host'), counter.count('to_device'),
                     sum(e.non_blocking for e in counter.events if e.kind == 'to_device'), len(sync_warnings)))
        if counter.events or sync_warnings:
            details.append(f'**{stage}**\n\n' + table(['kind', 'where', 'count'], [
                row.strip('|').split('|') for row in counter.table()]) +
                ''.join(f'\n- sync warning: `{w}`' for w in sorted(set(sync_warnings))))
    note = '' if ctx.cuda else '\n\nOn the CPU nothing can wait for a device: this only exercises the check.'
    unexpected = [row[0] for row in rows if row[0] != 'budget' and (row[1] or row[2] or row[5] or row[3] != row[4])]
    markdown = ('Three steps of each stage after three warm-up steps (batch 2, a tiny EDSR_CADyQ); expected: 0 reads, '
            '0 copies to the host, 6 copies to the device (the batches, non_blocking), 0 sync warnings. The budget '
            'stage\'s syncs are removed by another change.' + note + '\n\n' +
            table(['stage', 'reads', 'to host', 'to device', 'non_blocking', 'sync warnings'], rows) +
            ('\n\n' + '\n\n'.join(details) if details else ''))
    if unexpected:
        raise CheckFailed(f'host syncs in the steps of {", ".join(unexpected)}\n\n{markdown}')
    return markdown


def check_profile(ctx):
    """Kernels per step and the device's busy time against the wall time (profiler), EDSR-baseline, batch 16."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from cadyq_plugin.tools.host_syncs import STAGES, move_model, run_steps, stage_model, training_batches
    device = torch_device(ctx)
    network = ({'type': 'EDSR_CADyQ', 'num_feat': 8, 'num_block': 2, 'upscale': 2} if ctx.quick else
               {'type': 'EDSR_CADyQ', 'upscale': 4})
    batch, lq_size, steps = (2, 8, 2) if ctx.quick else (16, 48, 5)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.cuda else [])
    rows = []
    for stage in STAGES[:3]:
        model = move_model(stage_model(stage, tempfile.mkdtemp(dir=ctx.workdir), network), device)
        batches = training_batches(steps + 3, batch, lq_size, _scale(network), pinned=ctx.cuda)
        run_steps(model, batches[:3], first_iter=1)
        sync(device)
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            run_steps(model, batches[3:], first_iter=4)
            sync(device)
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
            f'{steps} profiled steps after 3 warm-up steps; wall time under the profiler.\n\n' + table(header, rows))


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
            sr, bits = run(torch_device(ctx), tf32)
            rows.append(('CUDA', 'on' if tf32 else 'off', int((bits != reference_bits).sum()),
                         f'{(sr - golden["sr_0_255"]).abs().max():.2e}', f'{(sr - cpu_sr).abs().max():.2e}'))
    apply_determinism(None)
    if rows[0][2]:
        raise CheckFailed(f'the CPU does not reproduce the reference bits\n\n{table(["device"], rows)}')
    return (f'{reference_bits.numel()} selector choices (8 patches x {reference_bits.shape[1]} selectors) and the '
            'SR output on 0..255 against the original implementation\'s; the CPU reproduces them exactly.\n\n' +
            table(['device', 'TF32', 'bits unlike the reference', 'max |output - reference|',
                   'max |output - CPU output|'], rows))
