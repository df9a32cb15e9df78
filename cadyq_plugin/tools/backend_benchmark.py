"""Eval inference speed of the execution backends, side by side: FP32 (best of NCHW and channels-last), fake-quant
PAMS and CADyQ, int8 PAMS and CADyQ, onnxruntime FP32 and int8 CADyQ; image-wise and patch-wise, as ratios to
FP32 from one interleaved run, with a per-layer-type time split, peak memory and checkpoint sizes.

Every variant goes through :func:`~cadyq_plugin.inference.super_resolve` (onnxruntime too, behind a network-like
adapter), so all of them pay the same tiling and stitching. Networks have random weights with calibrated ranges:
speed does not depend on the values, only the chosen bits do, and int8 costs the same whatever the bits.
"""
import collections
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn as nn

from cadyq_plugin.tools.benchmark import interleaved_median

VARIANTS = ('fp32_nchw', 'fp32_cl', 'fake_pams', 'fake_cadyq', 'int8_pams', 'int8_cadyq', 'ort_fp32', 'ort_int8')
# CADyQ int8 time as a fraction of FP32 (per backbone) and of our fake-quant CADyQ (every backbone)
FP32_TARGETS = {'EDSR_CADyQ': 0.75, 'SRResNet_CADyQ': 0.75, 'IDN_CADyQ': 0.6}
FAKE_TARGET = 0.6


class ChannelsLast(nn.Module):
    """Runs a network on channels-last input (the FP32 baseline's other layout)."""

    def __init__(self, net):
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last)
        self.upscale = net.upscale

    def forward(self, x, return_aux=False):
        return self.net(x.contiguous(memory_format=torch.channels_last), return_aux=return_aux)


class OnnxNetwork:
    """An onnxruntime session with the network call ``super_resolve`` expects (``net(x, return_aux=True)``)."""

    def __init__(self, path, upscale):
        import onnxruntime
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        self.path, self.upscale = path, upscale
        self.training = False

    def __call__(self, x, return_aux=False):
        outputs = self.session.run(None, {'lq': x.numpy()})
        sr = torch.from_numpy(outputs[0])
        bits = torch.from_numpy(outputs[1]) if len(outputs) > 1 else torch.zeros(x.shape[0], 0)
        return (sr, {'bits': bits}) if return_aux else sr


def calibrated(arch, mode, backend, lr, state_dict=None):
    """``arch`` in eval mode: the given weights, or random ones with PAMS ranges calibrated on ``lr``."""
    import cadyq_plugin  # noqa: F401
    from basicsr.archs import build_network

    from cadyq_plugin.quant import set_calibration
    net = build_network({'type': arch, 'quant_mode': mode, 'backend': backend})
    if state_dict is not None:
        net.load_state_dict(state_dict)
    elif mode != 'fp':
        with torch.no_grad():
            set_calibration(net, True)
            net.train()(lr)
            set_calibration(net, False)
    return net.eval()


def build_variants(arch, lr, workdir, variants=VARIANTS):
    """The ``variants`` of ``arch``; the ranges are calibrated on a crop of ``lr`` (small: the memory test's
    peak must be the inference's)."""
    from cadyq_plugin.deploy import export_onnx
    torch.manual_seed(0)
    lr = lr[:, :, :48, :48]
    fp = calibrated(arch, 'fp', 'fake', lr)
    pams = calibrated(arch, 'pams', 'fake', lr)
    cadyq = calibrated(arch, 'cadyq', 'fake', lr)
    nets = {'fp32_nchw': fp, 'fake_pams': pams, 'fake_cadyq': cadyq}  # random weights, shared by the modes
    if 'fp32_cl' in variants:
        nets['fp32_cl'] = ChannelsLast(calibrated(arch, 'fp', 'fake', lr, fp.state_dict()))
    nets['int8_pams'] = calibrated(arch, 'pams', 'int8', lr, pams.state_dict())
    nets['int8_cadyq'] = calibrated(arch, 'cadyq', 'int8', lr, cadyq.state_dict())
    for name, source in (('ort_fp32', fp), ('ort_int8', nets['int8_cadyq'])):
        if name in variants:
            path = os.path.join(workdir, f'{arch}_{name}.onnx')
            export_onnx(source, path)
            nets[name] = OnnxNetwork(path, fp.upscale)
    return {name: nets[name] for name in variants}


def layer_type(module):
    """The time-split category of a module (None: counted in ``other``). The PAMS quantizers inside a selector
    never run themselves (the selector quantizes), so each quantization is timed once."""
    from cadyq_plugin.quant import BitSelector, PAMSQuant, QConv2d
    if isinstance(module, QConv2d):
        return 'quantized convs'
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        return 'FP convs'
    if isinstance(module, (BitSelector, PAMSQuant)):
        return 'quantizers + selectors'
    return None


def time_split(net, run, repeats=1):
    """Seconds per layer type of one call of ``run``: forward hooks time the quantized convs, FP convs and
    quantizers (selector statistics included); ``other`` is the rest (activations, skips, pixel shuffle,
    upsampling, the image feature, tiling)."""
    spent, started, handles = collections.defaultdict(float), {}, []

    def start_clock(module, args):
        started[id(module)] = time.perf_counter()

    def stop_clock(kind):

        def hook(module, args, output):
            spent[kind] += time.perf_counter() - started[id(module)]

        return hook

    for module in net.modules():
        kind = layer_type(module)
        if kind is not None:
            handles += [module.register_forward_pre_hook(start_clock), module.register_forward_hook(stop_clock(kind))]
    try:
        run()
        spent.clear()
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        total = (time.perf_counter() - start) / repeats
    finally:
        for handle in handles:
            handle.remove()
    split = {kind: seconds / repeats for kind, seconds in spent.items()}
    split['other'] = total - sum(split.values())
    return split, total


def checkpoint_sizes(nets, workdir):
    """Bytes on disk: FP32 / CADyQ checkpoints (``params``), the int8 checkpoint, the ONNX graphs."""
    from cadyq_plugin.deploy import save_int8_checkpoint
    from cadyq_plugin.quant import QConv2d
    sizes = {}
    for name, net in (('fp32', nets['fp32_nchw']), ('cadyq float', nets['fake_cadyq'])):
        path = os.path.join(workdir, f'{name}.pth')
        torch.save({'params': net.state_dict()}, path)
        sizes[f'{name} checkpoint'] = os.path.getsize(path)
    path = os.path.join(workdir, 'int8.pth')
    save_int8_checkpoint(nets['int8_cadyq'], path)
    sizes['cadyq int8 checkpoint'] = os.path.getsize(path)
    convs = [m for m in nets['fake_cadyq'].modules() if isinstance(m, QConv2d)]
    sizes['quantized conv weights, float32'] = sum(4 * m.weight.numel() for m in convs)
    sizes['quantized conv weights, int8'] = sum(m.weight.numel() + 4 for m in convs)
    for name in ('ort_fp32', 'ort_int8'):
        if name in nets:
            sizes[f'ONNX {name[4:]}'] = os.path.getsize(nets[name].path)
    return sizes


def peak_memory_mib(arch, variant, setting):
    """Peak RSS growth (MiB) of one call of one variant, measured in a fresh process."""
    out = subprocess.run([sys.executable, '-m', 'cadyq_plugin.tools.backend_benchmark', '--peak', arch, variant,
                          setting], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _status_kib(field):
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ':'))


def _peak_child(arch, variant, setting):
    """Linux: the peak RSS (VmHWM) is reset to the current RSS right before the call, so the growth is the
    call's alone (``ru_maxrss`` would carry the parent's peak across ``exec``)."""
    from cadyq_plugin.inference import super_resolve
    lr, patchwise = SETTINGS[setting]
    with tempfile.TemporaryDirectory() as workdir:
        net = build_variants(arch, lr, workdir, (variant,))[variant]
        before = _status_kib('VmRSS')
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        super_resolve(net, lr, patchwise)
        print((_status_kib('VmHWM') - before) / 1024)


def _lr(height, width):
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))


IMAGE_WISE = 'image-wise LR 180x320'
SETTINGS = {  # the patch-wise image has 10 patches of 96/90 (the last row and column extend to the border)
    IMAGE_WISE: (_lr(180, 320), None),
    'patch-wise LR 270x480 (96/90, batch 16)': (_lr(270, 480), {'patch': 96, 'step': 90, 'batch': 16}),
}


def bench_backbone(arch, repeats, memory):
    from cadyq_plugin.inference import super_resolve
    report = {}
    with tempfile.TemporaryDirectory() as workdir:
        nets = build_variants(arch, SETTINGS[IMAGE_WISE][0], workdir)
        report['sizes'] = checkpoint_sizes(nets, workdir)
        for setting, (lr, patchwise) in SETTINGS.items():
            runs = {name: (lambda net=net: super_resolve(net, lr, patchwise)) for name, net in nets.items()}
            times = interleaved_median(runs, repeats if patchwise is None else max(1, repeats // 2), 1,
                                       torch.device('cpu'))
            splits = {name: time_split(nets[name], runs[name]) for name in ('fp32_nchw', 'fake_cadyq', 'int8_cadyq')}
            peaks = {name: peak_memory_mib(arch, name, setting) for name in nets} if memory and not patchwise else {}
            report[setting] = (times, splits, peaks)
    return report


def print_report(arch, report):
    misses = []
    print(f'\n== {arch} ==')
    for setting in SETTINGS:
        times, splits, peaks = report[setting]
        fp32 = min(times['fp32_nchw'], times['fp32_cl'])
        print(f'{setting}: FP32 {fp32 * 1e3:.0f} ms (NCHW {times["fp32_nchw"] * 1e3:.0f}, channels-last '
              f'{times["fp32_cl"] * 1e3:.0f})')
        for name in VARIANTS[2:]:
            memory = f', peak +{peaks[name]:.0f} MiB' if peaks else ''
            print(f'  {name:11s} {times[name] * 1e3:8.0f} ms  {times[name] / fp32:5.2f}x FP32{memory}')
        if peaks:
            print(f'  peak memory FP32 NCHW +{peaks["fp32_nchw"]:.0f} MiB, channels-last +{peaks["fp32_cl"]:.0f} MiB')
        vs_fp32, vs_fake = times['int8_cadyq'] / fp32, times['int8_cadyq'] / times['fake_cadyq']
        print(f'  CADyQ int8: {vs_fp32:.2f}x FP32, {vs_fake:.2f}x fake CADyQ')
        if arch in FP32_TARGETS and vs_fp32 > FP32_TARGETS[arch]:
            misses.append(f'{arch} {setting}: CADyQ int8 {vs_fp32:.2f}x FP32 > {FP32_TARGETS[arch]}x')
        if vs_fake > FAKE_TARGET:
            misses.append(f'{arch} {setting}: CADyQ int8 {vs_fake:.2f}x fake CADyQ > {FAKE_TARGET}x')
        for name, (split, total) in splits.items():
            shares = ', '.join(f'{kind} {seconds / total:.0%}' for kind, seconds in sorted(split.items()))
            print(f'  time split {name} ({total * 1e3:.0f} ms with hooks): {shares}')
    sizes = report['sizes']
    print('  sizes: ' + ', '.join(f'{name} {size / 2**20:.2f} MiB' for name, size in sizes.items()))
    return misses


def main(archs, repeats, memory):
    print(f'CPU ({torch.get_num_threads()} threads); torch {torch.__version__}; medians of {repeats} interleaved '
          'repetitions')
    misses = []
    for arch in archs:
        misses += print_report(arch, bench_backbone(arch, repeats, memory))
    print('\ntargets: CADyQ int8 <= ' + ', '.join(f'{v}x FP32 ({k})' for k, v in FP32_TARGETS.items()) +
          f'; <= {FAKE_TARGET}x fake CADyQ (every backbone)')
    for miss in misses:
        print(f'MISSED: {miss}')
    return 0


if __name__ == '__main__' and sys.argv[1:2] == ['--peak']:
    _peak_child(*sys.argv[2:5])
