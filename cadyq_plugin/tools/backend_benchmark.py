"""Eval inference speed of the execution backends, side by side: FP32 (best of NCHW and channels-last), fake-quant
PAMS and CADyQ, int8 PAMS and CADyQ in the reference layout (FP layers in float), the full-integer CADyQ network
(``fp_layer_bits: 8``), onnxruntime FP32, int8 and full-integer CADyQ; image-wise and patch-wise, as ratios to FP32
from one interleaved run, with a time split by kind of work, peak memory and checkpoint sizes.

Every variant goes through :func:`~cadyq_plugin.inference.super_resolve` (onnxruntime too, behind a network-like
adapter), so all of them pay the same tiling and stitching. Networks have random weights with calibrated ranges:
speed does not depend on the values, only the chosen bits do, and int8 costs the same whatever the bits.

``python -m cadyq_plugin.tools.backend_benchmark [--archs A ...] [--variants V ...] [--repeats N]`` runs it alone.
"""
import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn as nn

from cadyq_plugin.tools.benchmark import interleaved_median

VARIANTS = ('fp32_nchw', 'fp32_cl', 'fake_pams', 'fake_cadyq', 'int8_pams', 'int8_cadyq', 'int8_full', 'ort_fp32',
            'ort_int8', 'ort_full', 'ort_full_qlinear')
IMAGE_ONLY = ('ort_full_qlinear',)  # a batch-1 graph: image-wise only
DEFAULT_ARCHS = ('EDSR_CADyQ', 'CARN_CADyQ', 'IDN_CADyQ', 'SRResNet_CADyQ')
FULL_TARGET = 0.5  # full-integer CADyQ time as a fraction of FP32, every backbone, image-wise and patch-wise
# the reference layout's targets (FP layers in float): int8 CADyQ as a fraction of FP32, and of our fake CADyQ
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
        options.log_severity_level = 3  # not the notes about initializers the graph leaves unused
        self.session = onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        self.path, self.upscale = path, upscale
        self.training = False

    def __call__(self, x, return_aux=False):
        outputs = self.session.run(None, {'lq': x.numpy()})
        sr = torch.from_numpy(outputs[0])
        bits = torch.from_numpy(outputs[1]) if len(outputs) > 1 else torch.zeros(x.shape[0], 0)
        return (sr, {'bits': bits}) if return_aux else sr


def calibrated(arch, mode, backend, lr, state_dict=None, **options):
    """``arch`` in eval mode: the given weights, or random ones with PAMS ranges calibrated on ``lr``."""
    import cadyq_plugin  # noqa: F401
    from basicsr.archs import build_network

    from cadyq_plugin.quant import set_calibration
    net = build_network({'type': arch, 'quant_mode': mode, 'backend': backend, **options})
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
    full = calibrated(arch, 'cadyq', 'fake', lr, fp_layer_bits=8)
    nets = {'fp32_nchw': fp, 'fake_pams': pams, 'fake_cadyq': cadyq}  # random weights, shared by the modes
    if 'fp32_cl' in variants:
        nets['fp32_cl'] = ChannelsLast(calibrated(arch, 'fp', 'fake', lr, fp.state_dict()))
    nets['int8_pams'] = calibrated(arch, 'pams', 'int8', lr, pams.state_dict())
    nets['int8_cadyq'] = calibrated(arch, 'cadyq', 'int8', lr, cadyq.state_dict())
    nets['int8_full'] = calibrated(arch, 'cadyq', 'int8', lr, full.state_dict(), fp_layer_bits=8)
    for name, source in (('ort_fp32', fp), ('ort_int8', nets['int8_cadyq']), ('ort_full', nets['int8_full']),
                         ('ort_full_qlinear', nets['int8_full'])):
        if name in variants:
            path = os.path.join(workdir, f'{arch}_{name}.onnx')
            export_onnx(source, path, qlinear=name in IMAGE_ONLY)
            nets[name] = OnnxNetwork(path, fp.upscale)
    return {name: nets[name] for name in variants}


# kinds of work, by the operator that does it (the profiler's self time per operator)
WORK_KINDS = (
    ('integer convs', ('onednn::qconv',)),
    ('float convs', ('convolution', 'conv2d', 'conv_transpose')),
    ('layout (pixel shuffle, cat, copies)', ('pixel_shuffle', 'aten::cat', 'copy', 'clone', 'contiguous')),
    ('elementwise + reductions (quantization, selector statistics, activations, sums)', ('aten::',)),
)


def work_kind(op_name):
    for kind, patterns in WORK_KINDS:
        if any(pattern in op_name for pattern in patterns):
            return kind
    return None


def time_split(run):
    """Seconds per kind of work of one call of ``run``, from PyTorch's profiler (operators' self time); the rest
    of the wall time is ``Python and dispatch`` (the networks' Python code, the int8 tensors' dispatch, tiling).
    The profiler slows every operator a little, so read the shares, not the total."""
    from torch.profiler import ProfilerActivity, profile
    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        run()
        total = time.perf_counter() - start
    spent = collections.defaultdict(float)
    for event in prof.key_averages():
        kind = work_kind(event.key)
        if kind is not None:
            spent[kind] += event.self_cpu_time_total / 1e6
    split = {kind: spent[kind] for kind, _ in WORK_KINDS}
    split['Python and dispatch'] = max(0.0, total - sum(split.values()))
    return split, total


def checkpoint_sizes(nets, workdir):
    """Bytes on disk: FP32 / CADyQ checkpoints (``params``), the int8 checkpoints, the ONNX graphs."""
    from cadyq_plugin.deploy import save_int8_checkpoint
    from cadyq_plugin.quant.weight_quant import WeightQuantized
    sizes = {}
    for name, net in (('fp32', nets['fp32_nchw']), ('cadyq float', nets['fake_cadyq'])):
        path = os.path.join(workdir, f'{name}.pth')
        torch.save({'params': net.state_dict()}, path)
        sizes[f'{name} checkpoint'] = os.path.getsize(path)
    for name, variant in (('cadyq int8 checkpoint', 'int8_cadyq'), ('full-integer int8 checkpoint', 'int8_full')):
        if variant in nets:
            path = os.path.join(workdir, f'{variant}.pth')
            save_int8_checkpoint(nets[variant], path)
            sizes[name] = os.path.getsize(path)
    convs = [m for m in nets['fake_cadyq'].modules() if isinstance(m, WeightQuantized)]
    sizes['quantized conv weights, float32'] = sum(4 * m.weight.numel() for m in convs)
    sizes['quantized conv weights, int8'] = sum(m.weight.numel() + 4 for m in convs)
    for name in ('ort_fp32', 'ort_int8', 'ort_full', 'ort_full_qlinear'):
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


def bench_backbone(arch, repeats, memory, variants=VARIANTS):
    from cadyq_plugin.inference import super_resolve
    report = {}
    variants = tuple(dict.fromkeys(('fp32_nchw', 'fp32_cl', 'fake_cadyq') + tuple(variants)))
    with tempfile.TemporaryDirectory() as workdir:
        nets = build_variants(arch, SETTINGS[IMAGE_WISE][0], workdir, variants)
        report['sizes'] = checkpoint_sizes(nets, workdir)
        for setting, (lr, patchwise) in SETTINGS.items():
            runs = {name: (lambda net=net: super_resolve(net, lr, patchwise)) for name, net in nets.items()
                    if not (patchwise and name in IMAGE_ONLY)}
            times = interleaved_median(runs, repeats if patchwise is None else max(1, repeats // 2), 1,
                                       torch.device('cpu'))
            splits = {name: time_split(runs[name]) for name in ('fp32_cl', 'int8_cadyq', 'int8_full') if name in nets}
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
            if name in times:
                memory = f', peak +{peaks[name]:.0f} MiB' if name in peaks else ''
                print(f'  {name:11s} {times[name] * 1e3:8.0f} ms  {times[name] / fp32:5.2f}x FP32{memory}')
        if peaks:
            print(f'  peak memory FP32 NCHW +{peaks["fp32_nchw"]:.0f} MiB, channels-last +{peaks["fp32_cl"]:.0f} MiB')
        if 'int8_full' in times:
            full = times['int8_full'] / fp32
            print(f'  full-integer CADyQ (fp_layer_bits 8): {full:.2f}x FP32 (target <= {FULL_TARGET}x)')
            if full > FULL_TARGET:
                misses.append(f'{arch} {setting}: full-integer CADyQ {full:.2f}x FP32 > {FULL_TARGET}x')
        if 'int8_cadyq' in times:
            vs_fp32, vs_fake = times['int8_cadyq'] / fp32, times['int8_cadyq'] / times['fake_cadyq']
            print(f'  reference-layout CADyQ int8: {vs_fp32:.2f}x FP32, {vs_fake:.2f}x fake CADyQ')
            if arch in FP32_TARGETS and vs_fp32 > FP32_TARGETS[arch]:
                misses.append(f'{arch} {setting}: reference-layout CADyQ int8 {vs_fp32:.2f}x FP32 > '
                              f'{FP32_TARGETS[arch]}x')
            if vs_fake > FAKE_TARGET:
                misses.append(f'{arch} {setting}: reference-layout CADyQ int8 {vs_fake:.2f}x fake CADyQ > '
                              f'{FAKE_TARGET}x')
        for name, (split, total) in splits.items():
            shares = ', '.join(f'{kind} {seconds / total:.0%}' for kind, seconds in split.items())
            print(f'  time split {name} ({total * 1e3:.0f} ms under the profiler): {shares}')
    sizes = report['sizes']
    print('  sizes: ' + ', '.join(f'{name} {size / 2**20:.2f} MiB' for name, size in sizes.items()))
    return misses


def main(archs, repeats, memory, variants=VARIANTS):
    print(f'CPU ({torch.get_num_threads()} threads); torch {torch.__version__}; medians of {repeats} interleaved '
          'repetitions')
    misses = []
    for arch in archs or DEFAULT_ARCHS:
        misses += print_report(arch, bench_backbone(arch, repeats, memory, variants))
    print(f'\ntargets: full-integer CADyQ (backend int8, fp_layer_bits 8) <= {FULL_TARGET}x FP32 (every backbone, '
          'image-wise and patch-wise); reference layout: CADyQ int8 <= ' +
          ', '.join(f'{v}x FP32 ({k})' for k, v in FP32_TARGETS.items()) + f', <= {FAKE_TARGET}x fake CADyQ')
    for miss in misses:
        print(f'MISSED: {miss}')
    return 0


def _cli(argv):
    parser = argparse.ArgumentParser(prog='python -m cadyq_plugin.tools.backend_benchmark', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--archs', nargs='+', default=list(DEFAULT_ARCHS))
    parser.add_argument('--variants', nargs='+', choices=VARIANTS, default=list(VARIANTS),
                        help='FP32 (both layouts) and fake CADyQ always run')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--memory', action='store_true', help='also the peak memory of each variant (slow)')
    args = parser.parse_args(argv)
    return main(args.archs, args.repeats, args.memory, tuple(args.variants))


if __name__ == '__main__':
    if sys.argv[1:2] == ['--peak']:
        _peak_child(*sys.argv[2:5])
    else:
        sys.exit(_cli(sys.argv[1:]))
