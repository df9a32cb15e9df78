"""Eval inference speed of the execution backends, side by side: FP32 (NCHW and channels-last; the faster one is
the baseline), fake CADyQ, the reference-layout int8 CADyQ network (FP layers in float) and the full-integer CADyQ
network (``backend: int8``, ``fp_layer_bits: 8``); on request also fake/int8 PAMS and onnxruntime FP32, int8 and
full-integer CADyQ (``ConvInteger``, and ``QLinearConv`` image-wise). Image-wise and patch-wise, as ratios to FP32
from one interleaved run (medians of wall time), with a time split by kind of work, checkpoint sizes and, on
request, peak memory.

Every variant goes through :func:`~cadyq_plugin.inference.super_resolve` (onnxruntime too, behind a network-like
adapter), so all of them pay the same tiling and stitching. Networks have random weights with calibrated ranges:
speed does not depend on the values, only the chosen bits do, and int8 costs the same whatever the bits.

``basicsr benchmark`` runs it on the CPU after its other stages; ``basicsr benchmark --skip ops train infer
patchwise memory [--archs A ...] [--backend-variants V ...] [--backend-repeats N]`` runs it alone
(``--backend-variants`` adds to the default variants; ``all`` runs every variant).
"""
import collections
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn as nn


VARIANTS = ('fp32_nchw', 'fp32_cl', 'fake_pams', 'fake_cadyq', 'int8_pams', 'int8_cadyq', 'int8_full', 'ort_fp32',
            'ort_int8', 'ort_full', 'ort_full_qlinear')
DEFAULT_VARIANTS = ('fp32_nchw', 'fp32_cl', 'fake_cadyq', 'int8_cadyq', 'int8_full')
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


def build_variants(arch, lr, workdir, variants=DEFAULT_VARIANTS, options=None):
    """The ``variants`` of ``arch`` (built with the arch arguments ``options``); the ranges are calibrated on a crop
    of ``lr`` (small: the memory test's peak must be the inference's). The variants of a mode share its random
    weights."""
    from cadyq_plugin.deploy import export_onnx
    options = options or {}
    torch.manual_seed(0)
    lr = lr[:, :, :48, :48]
    sources = {'fp': ('fp', {}), 'pams': ('pams', {}), 'cadyq': ('cadyq', {}), 'full': ('cadyq', {'fp_layer_bits': 8})}
    needs = {'fp32_nchw': 'fp', 'fp32_cl': 'fp', 'ort_fp32': 'fp', 'fake_pams': 'pams', 'int8_pams': 'pams',
             'fake_cadyq': 'cadyq', 'int8_cadyq': 'cadyq', 'ort_int8': 'cadyq', 'int8_full': 'full',
             'ort_full': 'full', 'ort_full_qlinear': 'full'}
    fake = {}
    for variant in variants:
        source = needs[variant]
        if source not in fake:
            mode, extra = sources[source]
            fake[source] = calibrated(arch, mode, 'fake', lr, **options, **extra)

    def int8(source):
        mode, extra = sources[source]
        return calibrated(arch, mode, 'int8', lr, fake[source].state_dict(), **options, **extra)

    nets = {}
    for variant in variants:
        source = needs[variant]
        if variant == 'fp32_nchw' or variant.startswith('fake_'):
            nets[variant] = fake[source]
        elif variant == 'fp32_cl':
            nets[variant] = ChannelsLast(calibrated(arch, 'fp', 'fake', lr, fake['fp'].state_dict(), **options))
        elif variant.startswith('int8_'):
            nets[variant] = int8(source)
        else:  # onnxruntime: the graph of the fake FP32 network or of the int8 network
            path = os.path.join(workdir, f'{arch}_{variant}.onnx')
            export_onnx(fake['fp'] if source == 'fp' else int8(source), path, qlinear=variant in IMAGE_ONLY)
            nets[variant] = OnnxNetwork(path, fake[source].upscale)
    return nets


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
    """Bytes on disk: the FP32 checkpoint, float (``params``) and int8 checkpoints of the int8 variants' networks,
    the quantized convs' weights, the ONNX graphs."""
    from cadyq_plugin.deploy import save_int8_checkpoint
    from cadyq_plugin.quant.weight_quant import WeightQuantized
    sizes = {}
    torch.save({'params': nets['fp32_nchw'].state_dict()}, os.path.join(workdir, 'fp32.pth'))
    sizes['fp32 checkpoint'] = os.path.getsize(os.path.join(workdir, 'fp32.pth'))
    for name, variant in (('cadyq', 'int8_cadyq'), ('full-integer', 'int8_full')):
        if variant in nets:  # the float checkpoint training writes, and the int8 one export writes
            float_path, int8_path = (os.path.join(workdir, f'{variant}_{kind}.pth') for kind in ('float', 'int8'))
            torch.save({'params': nets[variant].state_dict()}, float_path)
            save_int8_checkpoint(nets[variant], int8_path)
            sizes[f'{name} float checkpoint'] = os.path.getsize(float_path)
            sizes[f'{name} int8 checkpoint'] = os.path.getsize(int8_path)
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


SPLIT_VARIANTS = ('fp32_cl', 'int8_cadyq', 'int8_full')  # the variants whose time is split by kind of work
CLOCKS = ('wall', 'process CPU')


def interleaved_times(runs, repeats, warmup=1):
    """``{clock: {name: median seconds per call}}`` of the ``runs``, called in turn ``repeats`` times so machine
    load affects them alike. Two clocks: wall time (what a user waits) and this process's CPU time (all its
    threads; other jobs on a busy machine barely move it, while a thread that waits for a core is not charged)."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    samples = {clock: {name: [] for name in runs} for clock in CLOCKS}
    for _ in range(repeats):
        for name, run in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            samples['process CPU'][name].append(time.process_time() - cpu)
            samples['wall'][name].append(time.perf_counter() - wall)
    return {clock: {name: statistics.median(values) for name, values in per_run.items()}
            for clock, per_run in samples.items()}


def bench_backbone(arch, repeats, memory, variants=DEFAULT_VARIANTS, options=None, settings=None):
    """``{setting: (seconds per clock and variant, time splits, peak MiB), 'sizes': bytes}`` of ``arch``: every
    variant's repetitions interleaved (the patch-wise setting, which runs longer, half as many); the time split of
    the image-wise setting (the first)."""
    from cadyq_plugin.inference import super_resolve
    settings = settings or SETTINGS
    report = {}
    variants = tuple(dict.fromkeys(DEFAULT_VARIANTS[:3] + tuple(variants)))  # FP32 both layouts, fake CADyQ
    with tempfile.TemporaryDirectory() as workdir:
        nets = build_variants(arch, next(iter(settings.values()))[0], workdir, variants, options)
        report['sizes'] = checkpoint_sizes(nets, workdir)
        for setting, (lr, patchwise) in settings.items():
            runs = {name: (lambda net=net: super_resolve(net, lr, patchwise)) for name, net in nets.items()
                    if not (patchwise and name in IMAGE_ONLY)}
            times = interleaved_times(runs, repeats if patchwise is None else max(1, repeats // 2))
            splits = {name: time_split(runs[name]) for name in SPLIT_VARIANTS if name in nets and not patchwise}
            peaks = {name: peak_memory_mib(arch, name, setting) for name in nets} if memory and not patchwise else {}
            report[setting] = (times, splits, peaks)
    return report


def fp32_baseline(times):
    """FP32's time in its faster layout, and that layout's name."""
    return min((times['fp32_nchw'], 'NCHW'), (times['fp32_cl'], 'channels-last'))


def print_report(arch, report, settings=None):
    """The backbone's lines (every ratio on both clocks: wall / process CPU); returns the targets it misses (on the
    wall clock)."""
    misses = []
    print(f'\n== {arch} ==')
    for setting in settings or SETTINGS:
        clocks, splits, peaks = report[setting]
        times, cpu = clocks['wall'], clocks['process CPU']
        (fp32, layout), (fp32_cpu, layout_cpu) = fp32_baseline(times), fp32_baseline(cpu)
        print(f'{setting}: FP32 {_ms(fp32)} ms wall ({layout}; NCHW {_ms(times["fp32_nchw"])}, channels-last '
              f'{_ms(times["fp32_cl"])}), {_ms(fp32_cpu)} ms process CPU ({layout_cpu})')
        for name in VARIANTS[2:]:
            if name in times:
                memory = f', peak +{peaks[name]:.0f} MiB' if name in peaks else ''
                print(f'  {name:16s} {_ms(times[name]):>8s} ms {times[name] / fp32:5.2f}x FP32 wall, '
                      f'{_ms(cpu[name]):>8s} ms {cpu[name] / fp32_cpu:5.2f}x FP32 process CPU{memory}')
        if peaks:
            print(f'  peak memory FP32 NCHW +{peaks["fp32_nchw"]:.0f} MiB, channels-last +{peaks["fp32_cl"]:.0f} MiB')
        if 'int8_full' in times:
            full = times['int8_full'] / fp32
            print(f'  full-integer CADyQ (fp_layer_bits 8): {full:.2f}x FP32 wall, {cpu["int8_full"] / fp32_cpu:.2f}x '
                  f'process CPU (target <= {FULL_TARGET}x)')
            if full > FULL_TARGET:
                misses.append(f'{arch} {setting}: full-integer CADyQ {full:.2f}x FP32 > {FULL_TARGET}x')
        if 'int8_cadyq' in times:
            vs_fp32, vs_fake = times['int8_cadyq'] / fp32, times['int8_cadyq'] / times['fake_cadyq']
            print(f'  reference-layout CADyQ int8: {vs_fp32:.2f}x FP32, {vs_fake:.2f}x fake CADyQ (wall)')
            if arch in FP32_TARGETS and vs_fp32 > FP32_TARGETS[arch]:
                misses.append(f'{arch} {setting}: reference-layout CADyQ int8 {vs_fp32:.2f}x FP32 > '
                              f'{FP32_TARGETS[arch]}x')
            if vs_fake > FAKE_TARGET:
                misses.append(f'{arch} {setting}: reference-layout CADyQ int8 {vs_fake:.2f}x fake CADyQ > '
                              f'{FAKE_TARGET}x')
        for name, (split, total) in splits.items():
            shares = ', '.join(f'{kind} {seconds / total:.0%}' for kind, seconds in split.items())
            print(f'  time split {name} ({_ms(total)} ms under the profiler): {shares}')
    sizes = report['sizes']
    print('  sizes: ' + ', '.join(f'{name} {size / 2**20:.2f} MiB' for name, size in sizes.items()))
    return misses


def _ms(seconds):
    """Milliseconds with three significant digits or more (the tiny networks of the tests run in a few ms)."""
    ms = seconds * 1e3
    return f'{ms:.0f}' if ms >= 100 else f'{ms:.{1 if ms >= 10 else 2}f}'


def print_summary(reports, clock, settings=None):
    """One Markdown table of every backbone and setting on ``clock``: FP32 (faster layout), reference-layout int8
    CADyQ and full-integer CADyQ, in ms and as ratios to FP32."""
    print(f'\n{clock} time:\n\n| backbone | setting | FP32 ms (layout) | int8 CADyQ (reference layout) | '
          f'full-integer CADyQ | target <= {FULL_TARGET}x |')
    print('|---|---|---|---|---|---|')
    for arch, report in reports.items():
        for setting in settings or SETTINGS:
            times = report[setting][0][clock]
            fp32, layout = fp32_baseline(times)
            cells = []
            for name in ('int8_cadyq', 'int8_full'):
                cells.append(f'{_ms(times[name])} ms, {times[name] / fp32:.2f}x' if name in times else '-')
            met = '-' if 'int8_full' not in times else ('met' if times['int8_full'] / fp32 <= FULL_TARGET else
                                                        'missed')
            print(f'| {arch} | {setting} | {_ms(fp32)} ({layout}) | {cells[0]} | {cells[1]} | {met} |')


def main(archs=None, repeats=5, memory=False, variants=DEFAULT_VARIANTS, options=None, settings=None):
    """Every backbone of ``archs`` (default: the four), ``options`` an arch's extra arguments (``{arch: {...}}``,
    e.g. a tiny network), ``settings`` other inputs than :data:`SETTINGS` (``{label: (lr, patchwise)}``)."""
    print(f'CPU ({torch.get_num_threads()} threads); torch {torch.__version__}; medians of {repeats} interleaved '
          'repetitions (patch-wise: half as many), wall and process CPU time; every variant through super_resolve; '
          'targets checked on wall time')
    misses, reports = [], {}
    for arch in archs or DEFAULT_ARCHS:
        reports[arch] = bench_backbone(arch, repeats, memory, variants, (options or {}).get(arch), settings)
        misses += print_report(arch, reports[arch], settings)
    for clock in CLOCKS:
        print_summary(reports, clock, settings)
    print(f'\ntargets: full-integer CADyQ (backend int8, fp_layer_bits 8) <= {FULL_TARGET}x FP32 (every backbone, '
          'image-wise and patch-wise); reference layout: CADyQ int8 <= ' +
          ', '.join(f'{v}x FP32 ({k})' for k, v in FP32_TARGETS.items()) + f', <= {FAKE_TARGET}x fake CADyQ')
    for miss in misses:
        print(f'MISSED: {miss}')
    return 0


if __name__ == '__main__' and sys.argv[1:2] == ['--peak']:  # the process of peak_memory_mib
    _peak_child(*sys.argv[2:5])
