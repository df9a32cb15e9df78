"""``basicsr budget-evidence``: CADyQ trained to target FABs on the quickstart data, the curves and the table.

For each backbone: the quickstart's FP and PAMS stages, then one CADyQ run per target through ``basicsr train``
(the reference options with the quickstart's changes, ``train.bit_opt.target_fab`` and the per-iteration log;
a run whose network and test results exist is reused, as are the FP and PAMS stages), ``basicsr test`` of its
network on the quickstart's held-out validation photos, and the FAB of the trained network in eval mode on the
training photos' sub-images (the distribution the budget is an average over: a content-aware network's FAB on
other photos moves with their content). Writes ``<workdir>/budget_evidence.json`` and ``.md`` and the plot of FAB
against iteration (matplotlib).
"""
import argparse
import json
import os
import re

from cadyq_plugin.tools.derive_options import derive_options
from cadyq_plugin.tools.quickstart import (BACKBONE_OPTIONS, OPTIONS, build_data, read_mean_row, run_basicsr,
                                           stage_overrides, test_overrides, thread_env)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_TOLERANCE = 0.25  # bit, training-batch FAB over the last 20 % of the run
VAL_TOLERANCE = 0.5  # bit, validation FAB
ITER_RE = re.compile(r'iter:\s*([\d,]+),')
VALUE_RE = re.compile(r'(\w+): (-?\d+\.\d+e[+-]\d+)')
BUDGET_RE = re.compile(r'Bit budget on \S+: target_fab \S+ \| reached FAB (\S+)')


def parse_train_log(path):
    """``(curve, validations)`` of a training log: ``{iteration: {key: value}}`` of the logged values and
    ``[(iteration, validation FAB)]`` from its bit-budget lines (the iteration last logged before each)."""
    curve, validations, last = {}, [], 0
    with open(path) as f:
        for line in f:
            found = ITER_RE.search(line)
            if found:
                last = int(found.group(1).replace(',', ''))
                curve[last] = {key: float(value) for key, value in VALUE_RE.findall(line)}
                continue
            found = BUDGET_RE.search(line)
            if found:
                validations.append((last, float(found.group(1))))
    return curve, validations


def summarize(curve, tail):
    """Training FAB at the end: the mean batch FAB over the last ``tail`` (a fraction) of the logged iterations,
    the final running FAB the controller steers and its final price."""
    its = sorted(curve)
    last = its[-max(1, round(len(its) * tail)):]
    return {'train_fab': sum(curve[i]['avg_bit'] for i in last) / len(last),
            'running_fab': curve[last[-1]]['running_fab'], 'final_price': curve[last[-1]]['bit_price']}


def train_log(workdir, name):
    folder = os.path.join(workdir, 'experiments', name)
    logs = sorted(f for f in os.listdir(folder) if f.startswith('train_') and f.endswith('.log'))
    return os.path.join(folder, logs[-1])


def run(command, workdir, log_path):
    """``basicsr <command>`` in ``workdir`` (one intra-op thread unless OMP_NUM_THREADS says otherwise)."""
    return run_basicsr(command, workdir, log_path, thread_env())


def run_backbone(arch, targets, iters, args, data, workdir):
    """FP and PAMS once (kept if done), then one CADyQ run and test per target; one result dict per target."""
    prefix, test_file = BACKBONE_OPTIONS[arch]
    for stage, stage_iters in zip(('fp', 'pams'), iters[:2]):
        train_opt = os.path.join(workdir, 'options', f'{prefix}_{stage}.yml')
        opt = derive_options(os.path.join(OPTIONS, f'{prefix}_{stage}.yml'),
                             {**stage_overrides(data, stage, stage_iters, args.batch, args.gt_size),
                              **network_overrides(args, stage, arch)}, train_opt)
        if not os.path.isfile(os.path.join(workdir, 'experiments', opt['name'], 'models', 'net_g_latest.pth')):
            run(['train', '-opt', train_opt], workdir, os.path.join(workdir, f'train_{arch}_{stage}.log'))
    results = []
    for target in targets:
        settings = dict(args.bit_opt)
        label = ', '.join(f'{key} {value:g}' for key, value in settings.items())
        name = run_name(arch, target, settings)
        overrides = stage_overrides(data, 'cadyq', iters[2], args.batch, args.gt_size)
        overrides.update(network_overrides(args, 'cadyq', arch))
        overrides.update({f'train.bit_opt.{key}': value for key, value in settings.items()})
        overrides.update({'name': name, 'train.bit_opt.target_fab': target, 'logger.print_freq': 1,
                          'val.val_freq': max(1, iters[2] // 6), 'logger.use_tb_logger': False})
        options_path = os.path.join(workdir, 'options', f'{name}.yml')
        train_opt = derive_options(os.path.join(OPTIONS, f'{prefix}_cadyq.yml'), overrides, options_path)
        results_csv = os.path.join(workdir, 'results', f'test_{name}', 'quickstart_val_results.csv')
        experiment = os.path.join(workdir, 'experiments', name)
        if not (os.path.isfile(os.path.join(experiment, 'models', 'net_g_latest.pth')) and
                os.path.isfile(results_csv)):
            run(['train', '-opt', options_path], workdir, os.path.join(workdir, f'train_{name}.log'))
            test_base = os.path.join(OPTIONS, test_file)
            test_opt = os.path.join(workdir, 'options', f'test_{name}.yml')
            derive_options(test_base, {**test_overrides(data, 'cadyq', options_path, test_base, f'test_{name}'),
                                       'val.target_fab': target}, test_opt)
            run(['test', '-opt', test_opt], workdir, os.path.join(workdir, f'test_{name}.log'))
        curve, validations = parse_train_log(train_log(workdir, train_opt['name']))
        mean = read_mean_row(results_csv)
        results.append({'arch': f'{arch} ({label})' if label else arch, 'target': target,
                        **summarize(curve, args.tail), 'net_fab': network_fab(options_path, experiment,
                                                                              data['train_lq_folder']),
                        'val_fab': float(mean['FAB']), 'psnr': float(mean['PSNR (dB)']),
                        'curve': {i: curve[i] for i in sorted(curve)}, 'validations': validations})
    return results


def network_fab(options_path, experiment_dir, lr_folder, batch=16):
    """FAB of a trained network in eval mode over the LR images of ``lr_folder`` (one forward each, equal sizes
    batched): what the saved network chooses on the distribution it was trained to a budget on."""
    import cv2
    import torch
    from basicsr.archs import build_network
    from basicsr.utils import img2tensor

    from cadyq_plugin.tools.derive_options import load_options
    net = build_network(load_options(options_path)['network_g'])
    state = torch.load(os.path.join(experiment_dir, 'models', 'net_g_latest.pth'), map_location='cpu',
                       weights_only=True)
    net.load_state_dict(state['params'])
    net.eval()
    files = sorted(os.listdir(lr_folder))
    bits = []
    with torch.no_grad():
        for start in range(0, len(files), batch):
            images = [cv2.imread(os.path.join(lr_folder, f), cv2.IMREAD_COLOR).astype('float32') / 255.0
                      for f in files[start:start + batch]]
            by_size = {}
            for image in images:
                by_size.setdefault(image.shape, []).append(img2tensor(image, bgr2rgb=True, float32=True))
            for group in by_size.values():
                bits.append(net(torch.stack(group), return_aux=True)[1]['bits'].float().mean(dim=1))
    return float(torch.cat(bits).mean())


def network_overrides(args, stage, arch):
    """The arch arguments ``args.network`` gives ``arch`` (``{arch or None: {argument: value}}``, None for every
    backbone; e.g. a smaller ``num_feat`` for a quick run) for the student and, in the distilling stages, the
    teacher."""
    nets = ('network_g',) if stage == 'fp' else ('network_g', 'network_t')
    network = getattr(args, 'network', None) or {}
    settings = {**network.get(None, {}), **network.get(arch, {})}
    return {f'{net}.{key}': value for net in nets for key, value in settings.items()}


def run_name(arch, target, settings):
    """The experiment name of one CADyQ run to ``target`` with controller ``settings``."""
    return f'budget_{arch}_fab{target:g}' + ''.join(f'_{key}{value:g}' for key, value in settings.items())


def within(result):
    """Training FAB within :data:`TRAIN_TOLERANCE` of the target, the trained network's FAB on the training photos
    within :data:`VAL_TOLERANCE`."""
    return (abs(result['train_fab'] - result['target']) <= TRAIN_TOLERANCE and
            abs(result['net_fab'] - result['target']) <= VAL_TOLERANCE)


def format_table(results, tail):
    lines = [f'| backbone | target FAB | train FAB (last {tail:.0%} of the run) | network FAB, training photos | '
             'within tolerance | val FAB, held-out crops | val PSNR (dB) |', '|---|---:|---:|---:|:---:|---:|---:|']
    for r in results:
        lines.append(f'| {r["arch"]} | {r["target"]:.2f} | {r["train_fab"]:.2f} | {r["net_fab"]:.2f} | '
                     f'{"yes" if within(r) else "no"} | {r["val_fab"]:.2f} | {r["psnr"]:.2f} |')
    return '\n'.join(lines)


def plot(results, path):
    """FAB against iteration, one panel per backbone: running FAB, batch FAB, validation FAB and the target."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    archs = list(dict.fromkeys(r['arch'] for r in results))
    columns = min(2, len(archs))
    rows = -(-len(archs) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6 * columns, 3.6 * rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(archs):]:
        ax.axis('off')
    for ax, arch in zip(axes.flat, archs):
        for color, r in zip(('tab:blue', 'tab:orange', 'tab:green', 'tab:red', 'tab:purple'),
                            [r for r in results if r['arch'] == arch]):
            its = sorted(int(i) for i in r['curve'])
            ax.plot(its, [r['curve'][i]['avg_bit'] for i in its], color=color, alpha=0.25, linewidth=0.8)
            ax.plot(its, [r['curve'][i]['running_fab'] for i in its], color=color, label=f'target {r["target"]:g}')
            ax.axhline(r['target'], color=color, linestyle='--', linewidth=0.8)
            if r['validations']:
                ax.plot(*zip(*r['validations']), 'o', color=color, markersize=4)
        ax.set_title(f'{arch} x4 CADyQ, quickstart data')
        ax.set_xlabel('iteration')
        ax.set_ylabel('FAB (bits)')
        ax.grid(alpha=0.3)
        ax.legend(loc='upper right', fontsize=8)
    fig.text(0.5, 0.005, 'line: running FAB (steered), faint: batch FAB, dashed: target, dots: validation FAB',
             ha='center', fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bit_opt_setting(text):
    """``key=value`` of ``--bit-opt``: a numeric setting of the controller."""
    key, sep, value = text.partition('=')
    if not sep or key not in ('gain', 'floor', 'smoothing'):
        raise argparse.ArgumentTypeError(f'{text!r}: expected KEY=VALUE with KEY one of gain, floor, smoothing')
    try:
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r}: {value!r} is not a number') from None


def build_parser():
    parser = argparse.ArgumentParser(prog='basicsr budget-evidence', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--archs', nargs='*', choices=sorted(BACKBONE_OPTIONS), default=['edsr', 'idn'])
    parser.add_argument('--targets', type=float, nargs='+', default=[5.0, 6.0, 7.0])
    parser.add_argument('--iters', type=int, nargs=3, default=(300, 150, 300), metavar=('FP', 'PAMS', 'CADYQ'))
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--gt-size', type=int, default=64, help='HR training patch size')
    parser.add_argument('--bit-opt', nargs='*', type=bit_opt_setting, default=[], metavar='KEY=VALUE',
                        help='controller settings of train.bit_opt to run with, e.g. gain=0.1')
    parser.add_argument('--include', nargs='*', default=[], metavar='JSON',
                        help='budget_evidence.json of earlier runs to show before these in the table and plot')
    parser.add_argument('--tail', type=float, default=0.2, help='fraction of the run (its last iterations) averaged '
                        'for the final training FAB')
    parser.add_argument('--workdir', default='budget_workdir', help='everything but the plot is written here')
    parser.add_argument('--plot', default=os.path.join(REPO, 'docs', 'evidence', 'budget_fab.png'))
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)

    import cadyq_plugin  # noqa: F401
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    data = build_data(workdir)[0] if args.archs else None
    results = []
    for path in args.include:
        with open(path) as f:
            results += [{**r, 'curve': {int(i): v for i, v in r['curve'].items()}} for r in json.load(f)['results']]
    for arch in args.archs:
        results += run_backbone(arch, args.targets, args.iters, args, data, workdir)
        print(f'[budget evidence] {arch}: done', flush=True)
    with open(os.path.join(workdir, 'budget_evidence.json'), 'w') as f:
        json.dump({'args': vars(args), 'results': results}, f, indent=1)
    table = format_table(results, args.tail)
    with open(os.path.join(workdir, 'budget_evidence.md'), 'w') as f:
        f.write(table + '\n')
    plot(results, args.plot)
    print(table)
    print(f'plot: {args.plot}')
    return 0 if all(within(r) for r in results) else 1

