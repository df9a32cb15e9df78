"""The checks of ``basicsr gpu-check`` that run the ``basicsr`` command in processes of their own: the three
training stages and an interrupted run resumed, torchrun, inference and the benchmark.
:data:`cadyq_plugin.tools.gpu_check.CHECKS` lists them."""
import os
import subprocess
import sys
import time

from cadyq_plugin.tools.gpu_check_network import REPO, CheckFailed, sync, table, torch_device


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
            raise CheckFailed(table(['run', 'exit status', 's'], rows) + f'\n\n{stage}: exit {status}\n\n```\n'
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
    result = table(['run', 'exit status', 's'], rows)
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
    markdown = table(['run', 'exit status', 's', ''], rows)
    if notes:
        raise CheckFailed(markdown + '\n\n' + '\n\n'.join(notes))
    return markdown


def check_inference(ctx):
    """Image-wise inference of an LR 1920x1080 image (time, peak memory) and patch-wise throughput."""
    import torch
    from basicsr.archs import build_network

    import cadyq_plugin  # noqa: F401
    from cadyq_plugin.inference import super_resolve
    device = torch_device(ctx)
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
        sync(device)
        if ctx.cuda:
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        result = super_resolve(net, lq, patchwise)
        sync(device)
        seconds = time.perf_counter() - start
        peak = f'{torch.cuda.max_memory_allocated(device) / 2**20:.0f}' if ctx.cuda else '-'
        rate = f'{len(result.forwards) / seconds:.1f}' if patchwise else '-'
        rows.append((label, f'{seconds:.3f}', peak, len(result.forwards), rate))
    return (f'{network["type"]} x{network["upscale"]} (cadyq), LR {width}x{height}.\n\n' +
            table(['inference', 's', 'peak MiB', 'forward passes', 'patches / s'], rows))


def check_benchmark(ctx):
    """``basicsr benchmark --device <device>`` (its own tables)."""
    args = [sys.executable, '-m', 'cadyq_plugin.cli', 'benchmark', '--device', ctx.device]
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
    return f'`basicsr {" ".join(args[3:])}`\n\n```\n{out.strip()}\n```'
