"""``basicsr benchmark``: speed and memory of CADyQ against its FP and PAMS baselines, measured side by side in one
run.

Training: one optimisation step of the real models (CADyQSRModel for FP, as stage 1 trains it; CADyQModel with
its teacher for PAMS and CADyQ), same batch and patch, each eager and compiled (``train.compile``); the
operations one eager step dispatches (a dispatch recorder), with BasicSR's own SRModel FP step as a second
reference. Inference: eval forward of the CADyQ network vs the FP network. Patch-wise: throughput (patches/s)
with batch 1 vs a larger batch, and the peak memory of a large image. Backends (CPU): the inference backends of
:mod:`cadyq_plugin.tools.backend_benchmark` on the same networks. Repetitions of the variants are interleaved so
machine load affects them alike; the median is reported.
"""
import argparse
import os
import statistics
import tempfile
import time
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cadyq_plugin.models.compiling import allow_many_compiled_networks

TARGETS = {'pams_train': 1.6, 'cadyq_train': 1.6, 'cadyq_train_compiled': 1.3, 'cadyq_ops': 3.0, 'cadyq_infer': 1.3}
TARGET_TEXT = {'pams_train': 'eager PAMS step / eager FP step', 'cadyq_train': 'eager CADyQ step / eager FP step',
               'cadyq_train_compiled': 'compiled CADyQ step / eager FP step',
               'cadyq_ops': "eager CADyQ step's operations / BasicSR FP step's", 'cadyq_infer': 'CADyQ / FP inference'}
MODES = ('fp', 'pams', 'cadyq')
DEFAULT_BACKBONES = ('EDSR_CADyQ', 'CARN_CADyQ', 'IDN_CADyQ', 'SRResNet_CADyQ')


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _model_opt(network, mode, device, workdir, teacher_path=None, init_path=None, compile_mode=False):
    """Options of the ``mode`` model of ``network`` (a ``network_g`` section without ``quant_mode``);
    ``compile_mode`` is ``train.compile`` (False: eager)."""
    opt = {
        'name': f'bench_{mode}', 'num_gpu': 1 if device.type == 'cuda' else 0, 'is_train': True,
        'dist': False, 'rank': 0, 'world_size': 1,
        'network_g': _network(network, mode),
        'path': {'pretrain_network_g': init_path, 'models': workdir, 'training_states': workdir},
        'train': {
            'optim_g': {'type': 'Adam', 'lr': 1e-4},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [10**6], 'gamma': 0.5},
            'pixel_opt': {'type': 'L1Loss', 'loss_weight': 255.0},
        },
        'val': {'metrics': {}},
    }
    if mode == 'fp':
        opt['model_type'] = 'CADyQSRModel'
    opt['train']['compile'] = compile_mode
    if mode != 'fp':
        opt['model_type'] = 'CADyQModel'
        opt['network_g']['calib_iters'] = 0
        opt['network_t'] = dict(network, quant_mode='fp' if mode == 'pams' else 'pams')
        opt['path']['pretrain_network_t'] = teacher_path
        opt['train']['optim_alpha'] = {'lr': 1e-2}
        opt['train']['kd_opt'] = {'type': 'ATLoss', 'loss_weight': 1e3, 'feature_weight': 0.1}
    if mode == 'cadyq':
        opt['train']['optim_selector'] = {'type': 'Adam', 'lr': 1e-4}
        opt['train']['bit_opt'] = {'type': 'BitLoss', 'loss_weight': 1e-4}
    return opt


def _network(network, mode):
    """The ``mode`` variant of a network section; the FP model of a CADyQWrapper is its bare backbone (stage 1)."""
    if mode == 'fp' and network['type'] == 'CADyQWrapper':
        return dict(network['backbone'])
    return dict(network, quant_mode=mode)


def network_label(network):
    return network['backbone']['type'] if network['type'] == 'CADyQWrapper' else network['type']


def build_training_models(network, device, workdir, compile_mode=False, modes=MODES):
    """FP (CADyQSRModel), PAMS and CADyQ (CADyQModel) models of ``network`` with their teachers, ready to step;
    ``compile_mode`` is their ``train.compile``."""
    import cadyq_plugin  # noqa: F401
    from basicsr.archs import build_network

    from cadyq_plugin.models import CADyQModel, CADyQSRModel
    paths = {}
    for mode in ('fp', 'pams'):
        paths[mode] = os.path.join(workdir, f'{mode}.pth')
        if not os.path.exists(paths[mode]):
            torch.save({'params': build_network(_network(network, mode)).state_dict()}, paths[mode])
    teachers = {'fp': (None, None), 'pams': (paths['fp'], paths['fp']), 'cadyq': (paths['pams'], paths['pams'])}
    return {mode: (CADyQSRModel if mode == 'fp' else CADyQModel)(
        _model_opt(network, mode, device, workdir, *teachers[mode], compile_mode=compile_mode)) for mode in modes}


def basicsr_fp_model(network, device, workdir):
    """BasicSR's own SRModel on the FP network (its optimizer, no step guard): the reference FP step."""
    from basicsr.models.sr_model import SRModel
    opt = _model_opt(network, 'fp', device, workdir)
    del opt['model_type'], opt['train']['compile']
    return SRModel(opt)


def training_data(batch, patch, scale):
    generator = torch.Generator().manual_seed(0)
    return {'lq': torch.rand(batch, 3, patch // scale, patch // scale, generator=generator),
            'gt': torch.rand(batch, 3, patch, patch, generator=generator)}


def training_step(model, data, current_iter=1000):
    """One optimisation step (after calibration: ``calib_iters`` is 0 in these options)."""
    model.feed_data(data)
    model.optimize_parameters(current_iter)


class OpCounter(TorchDispatchMode):
    """Counts the operations dispatched to ATen kernels (every op, views included), by name."""

    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self):
        return sum(self.ops.values())


def count_step_ops(model, data):
    """Operations of one eager training step of ``model`` (after one unrecorded step, which creates the
    optimizer state)."""
    training_step(model, data)
    counter = OpCounter()
    with counter:
        training_step(model, data)
    return counter.total


def step_op_counts(network, batch, patch, scale, device=torch.device('cpu')):
    """Operations of one eager training step: FP, PAMS and CADyQ as benchmarked, and BasicSR's FP step."""
    with tempfile.TemporaryDirectory() as workdir:
        data = training_data(batch, patch, scale)
        counts = {mode: count_step_ops(model, data)
                  for mode, model in build_training_models(network, device, workdir).items()}
        counts['fp_basicsr'] = count_step_ops(basicsr_fp_model(network, device, workdir), data)
    return counts


def interleaved_median(functions, repeats, warmup, device, statistic=statistics.median, clock=time.perf_counter):
    """Median (or ``statistic``) seconds per call of each function, running them in turn ``repeats`` times;
    ``clock`` is wall time, or ``time.process_time`` (this process's CPU time, which other jobs on a busy machine
    do not inflate; with one thread it is the wall time of a quiet machine)."""
    for fn in functions.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            _sync(device)
            start = clock()
            fn()
            _sync(device)
            times[name].append(clock() - start)
    return {name: statistic(values) for name, values in times.items()}


def bench_training(network, device, batch, patch, scale, repeats, warmup, compiled=True, compile_mode=True,
                   statistic=statistics.median, clock=time.perf_counter):
    """Median (or ``statistic``) step time of FP, PAMS and CADyQ, eager and (``compiled``) compiled with
    ``compile_mode``, interleaved;
    returns ``({(kind, mode): seconds}, {mode: seconds of the first compiled step, compilation included})``."""
    with tempfile.TemporaryDirectory() as workdir:
        models = {('eager', mode): model for mode, model in build_training_models(network, device, workdir).items()}
        first = {}
        if compiled:
            for mode, model in build_training_models(network, device, workdir, compile_mode).items():
                models[('compiled', mode)] = model
                data = {k: v.to(device) for k, v in training_data(batch, patch, scale).items()}
                _sync(device)
                start = time.perf_counter()
                training_step(model, data)  # compiles the student (and its teacher)
                _sync(device)
                first[mode] = time.perf_counter() - start
        data = training_data(batch, patch, scale)
        times = interleaved_median({key: (lambda m=model: training_step(m, data)) for key, model in models.items()},
                                   repeats, warmup, device, statistic, clock)
    return times, first


def cuda_training_measurements(archs=DEFAULT_BACKBONES, batch=16, patch=192, repeats=10, warmup=3,
                               compile_modes=('default', 'reduce-overhead')):
    """The CUDA measurements of a GPU session (H100, batch 16, HR patch 192): per backbone and compile mode, eager
    and compiled step times of FP, PAMS and CADyQ and the compiled CADyQ step against the eager FP step (target
    <= 1.5x); ``reduce-overhead`` adds CUDA graphs. A mode that fails is reported with its error, not raised.
    Returns ``{arch: {compile_mode: result}}`` and prints one line per result."""
    device = torch.device('cuda')
    allow_many_compiled_networks(64)  # 6 compiled models per backbone, all in this process
    results = {}
    for arch in archs:
        network = {'type': arch}
        results[arch] = {}
        for compile_mode in compile_modes:
            try:
                times, first = bench_training(network, device, batch, patch, 4, repeats, warmup, True, compile_mode)
            except Exception as err:  # noqa: BLE001  (a failing mode is a result to report)
                results[arch][compile_mode] = {'error': f'{type(err).__name__}: {err}'}
                print(f'{arch} {compile_mode}: FAILED {type(err).__name__}: {err}')
                continue
            ratio = times[('compiled', 'cadyq')] / times[('eager', 'fp')]
            results[arch][compile_mode] = {'times': times, 'first_step': first, 'compiled_cadyq_vs_eager_fp': ratio}
            print(f'{arch} {compile_mode}: ' + training_table_line(times) + f'; first compiled steps {_seconds(first)}')
    return results


def _seconds(values):
    return ', '.join(f'{mode} {value:.0f} s' for mode, value in values.items())


def training_table_line(times):
    """``eager FP 199.0 ms (1.00x), ...``: each step time and its ratio to the eager FP step."""
    names = {'fp': 'FP', 'pams': 'PAMS', 'cadyq': 'CADyQ'}
    return ', '.join(f'{kind} {names[mode]} {times[(kind, mode)] * 1e3:.1f} ms '
                     f'({times[(kind, mode)] / times[("eager", "fp")]:.2f}x)'
                     for kind in ('eager', 'compiled') for mode in MODES if (kind, mode) in times)


def bench_inference(network, device, batch, lr_size, repeats, warmup):
    import cadyq_plugin  # noqa: F401
    from basicsr.archs import build_network
    nets = {mode: build_network(_network(network, mode)).to(device).eval() for mode in ('fp', 'cadyq')}
    x = torch.rand(batch, 3, lr_size, lr_size, device=device)

    def forward(net):
        with torch.no_grad():
            net(x)

    return interleaved_median({m: (lambda m=m: forward(nets[m])) for m in nets}, repeats, warmup, device)


def bench_patchwise(network, device, lr_hw, patch, step, batches, repeats):
    """Patches per second of patch-wise inference of an ``lr_hw`` image for each batch size."""
    import cadyq_plugin  # noqa: F401
    from basicsr.archs import build_network

    from cadyq_plugin.inference import super_resolve
    net = build_network(_network(network, 'cadyq')).to(device).eval()
    lq = torch.rand(1, 3, *lr_hw, device=device)

    def run(batch):
        return len(super_resolve(net, lq, {'patch': patch, 'step': step, 'batch': batch}).forwards)

    n_patches = run(batches[0])
    times = interleaved_median({b: (lambda b=b: run(b)) for b in batches}, repeats, 0, device)
    return {b: n_patches / t for b, t in times.items()}, n_patches


def peak_memory_patchwise(network, device, lr_hw, patch, step, batch):
    """Peak memory (MiB) while testing one large image patch-wise: CUDA allocator peak, or the process's
    peak RSS growth on the CPU (run this last: RSS peaks never go down)."""
    import resource
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    bench_patchwise(network, device, lr_hw, patch, step, [batch], 1)
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2**20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024


def _options_network(path):
    """The ``network_g`` of an options file, without the arguments the benchmark sets per mode."""
    from cadyq_plugin.options import read_yml
    network = dict(read_yml(path)['network_g'])
    for key in ('quant_mode', 'calib_iters'):
        network.pop(key, None)
    return network


def bench_backends(networks, repeats, memory, extra_variants=()):
    """The backends stage on the benchmark's networks: those named by their arch in one report, each options
    file's network (its own arguments) in a report of its own, without the peak memory (measured in a process that
    rebuilds a network from its arch name alone). ``extra_variants``: besides the default ones (``all``: every one)."""
    from cadyq_plugin.tools import backend_benchmark
    variants = backend_benchmark.VARIANTS if 'all' in extra_variants else backend_benchmark.DEFAULT_VARIANTS + tuple(
        extra_variants)
    variants = tuple(dict.fromkeys(variants))
    named = [network['type'] for network in networks if set(network) == {'type'}]
    if named:
        backend_benchmark.main(named, repeats, memory, variants)
    for network in networks:
        if set(network) != {'type'}:
            arch, options = network['type'], {k: v for k, v in network.items() if k != 'type'}
            backend_benchmark.main([arch], repeats, False, variants, {arch: options})


def build_parser():
    from cadyq_plugin.tools.backend_benchmark import DEFAULT_VARIANTS, VARIANTS
    parser = argparse.ArgumentParser(prog='basicsr benchmark', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--archs', nargs='+', default=None, help=f'archs (default {list(DEFAULT_BACKBONES)})')
    parser.add_argument('--opt', nargs='+', default=[], help='options files whose network_g to measure instead '
                        '(e.g. a CADyQWrapper network; its FP model is the bare backbone)')
    parser.add_argument('--batch', type=int, default=None, help='training batch (default: 16 on CUDA, 4 on CPU)')
    parser.add_argument('--patch', type=int, default=None, help='HR training patch (default: 192 CUDA, 96 CPU)')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--infer-lr', type=int, default=None, help='LR size of the inference test')
    parser.add_argument('--patchwise-image', default=None, help='LR size HxW for the patch-wise test')
    parser.add_argument('--patchwise-batch', type=int, default=None)
    parser.add_argument('--memory-image', default=None, help='LR size HxW of the large-image memory test')
    parser.add_argument('--backend-repeats', type=int, default=5, help='repetitions of the backends comparison')
    parser.add_argument('--backend-variants', nargs='+', choices=VARIANTS + ('all',), default=[],
                        help=f'backends besides the default ones ({", ".join(DEFAULT_VARIANTS)}); all: every one')
    parser.add_argument('--compile-mode', default=True, help='train.compile of the compiled models (default true)')
    parser.add_argument('--statistic', choices=['median', 'min'], default='median',
                        help='of the training step times (min: the least disturbed repetition, on a busy machine)')
    parser.add_argument('--clock', choices=['wall', 'cpu'], default='wall',
                        help="training step times: wall time, or this process's CPU time (CPU only; with "
                             'OMP_NUM_THREADS=1 a busy machine measures what a quiet one would)')
    parser.add_argument('--skip', nargs='*', default=[],
                        choices=['ops', 'train', 'compiled', 'infer', 'patchwise', 'memory', 'backends',
                                 'backend-memory'])
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    allow_many_compiled_networks(64)  # 6 compiled models per backbone, all in this process
    cuda = device.type == 'cuda'
    batch = args.batch or (16 if cuda else 4)
    patch = args.patch or (192 if cuda else 96)
    infer_lr = args.infer_lr or (180 if cuda else 64)
    pw_image = tuple(int(v) for v in (args.patchwise_image or ('1080x2048' if cuda else '192x288')).split('x'))
    pw_batch = args.patchwise_batch or (64 if cuda else 8)
    mem_image = tuple(int(v) for v in (args.memory_image or ('1080x2048' if cuda else '540x1024')).split('x'))
    name = torch.cuda.get_device_name(device) if cuda else f'CPU ({torch.get_num_threads()} threads)'
    print(f'device: {name}; torch {torch.__version__}')
    networks = [{'type': arch} for arch in args.archs or ([] if args.opt else DEFAULT_BACKBONES)]
    networks += [_options_network(path) for path in args.opt]
    failures = []
    for network in networks:
        arch = network_label(network)
        print(f'\n== {arch} ==')
        if 'ops' not in args.skip and not cuda:
            ops = step_op_counts(network, batch, patch, 4)
            print(f'operations of one eager training step: FP {ops["fp"]} (BasicSR SRModel FP {ops["fp_basicsr"]}), '
                  f'PAMS {ops["pams"]} ({ops["pams"] / ops["fp_basicsr"]:.2f}x), CADyQ {ops["cadyq"]} '
                  f'({ops["cadyq"] / ops["fp_basicsr"]:.2f}x BasicSR FP, {ops["cadyq"] / ops["fp"]:.2f}x FP)')
            if ops['cadyq'] / ops['fp_basicsr'] > TARGETS['cadyq_ops']:
                failures.append((arch, 'cadyq_ops', ops['cadyq'] / ops['fp_basicsr']))
        if 'train' not in args.skip:
            t, first = bench_training(network, device, batch, patch, 4, args.repeats, args.warmup,
                                      'compiled' not in args.skip, args.compile_mode,
                                      {'median': statistics.median, 'min': min}[args.statistic],
                                      time.process_time if args.clock == 'cpu' and not cuda else time.perf_counter)
            print(f'training step ({args.statistic} {args.clock} time; batch {batch}, HR patch {patch}, ratios to the '
                  f'eager FP step): {training_table_line(t)}')
            if first:
                print(f'first compiled step (compilation included): {_seconds(first)}')
            ratios = {'pams_train': t[('eager', 'pams')] / t[('eager', 'fp')],
                      'cadyq_train': t[('eager', 'cadyq')] / t[('eager', 'fp')]}
            if ('compiled', 'cadyq') in t:
                ratios['cadyq_train_compiled'] = t[('compiled', 'cadyq')] / t[('eager', 'fp')]
            failures += [(arch, k, v) for k, v in ratios.items() if v > TARGETS[k]]
        if 'infer' not in args.skip:
            t = bench_inference(network, device, 1, infer_lr, args.repeats, args.warmup)
            ratio = t['cadyq'] / t['fp']
            print(f'inference (LR {infer_lr}x{infer_lr}): FP {t["fp"] * 1e3:.1f} ms, CADyQ {t["cadyq"] * 1e3:.1f} ms '
                  f'({ratio:.2f}x)')
            if ratio > TARGETS['cadyq_infer']:
                failures.append((arch, 'cadyq_infer', ratio))
        if 'patchwise' not in args.skip:
            rates, n = bench_patchwise(network, device, pw_image, 96, 90, [1, pw_batch], max(1, args.repeats // 2))
            print(f'patch-wise LR {pw_image[0]}x{pw_image[1]} ({n} patches of 96, step 90): batch 1 '
                  f'{rates[1]:.1f} patches/s, batch {pw_batch} {rates[pw_batch]:.1f} patches/s '
                  f'({rates[pw_batch] / rates[1]:.2f}x)')
    if 'memory' not in args.skip:
        arch = network_label(networks[0])
        peak = peak_memory_patchwise(networks[0], device, mem_image, 96, 90, pw_batch)
        out_mib = 3 * 4 * mem_image[0] * mem_image[1] * 16 / 2**20
        print(f'\npeak memory, {arch} patch-wise LR {mem_image[0]}x{mem_image[1]} (batch {pw_batch}): {peak:.0f} MiB '
              f'(the float32 SR output alone is {out_mib:.0f} MiB)')
    if 'backends' not in args.skip and not cuda:  # eval inference of FP32, fake, int8 and onnxruntime
        bench_backends(networks, args.backend_repeats, 'backend-memory' not in args.skip, args.backend_variants)
    print('\ntargets: ' + ', '.join(f'{TARGET_TEXT[k]} <= {v}x' for k, v in TARGETS.items()))
    for arch, key, value in failures:
        print(f'MISSED: {arch} {key} {value:.2f}x > {TARGETS[key]}x')
    return 0

