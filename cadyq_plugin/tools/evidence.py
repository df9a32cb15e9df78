"""Evidence that CADyQ spends bits by content, on the photos bundled with scikit-image.

For each backbone: the quickstart's FP and PAMS W8A8 stages, CADyQ trained to target FABs (:mod:`budget_evidence`:
the budget table), then each CADyQ network and the PAMS W8A8 network run patch-wise (LR 96, step 90) on held-out
photos (bundled photos the quickstart never trains on, whole). Per patch: the FAB, the patch's mean image gradient
(the selector's own image feature, unscaled) and the PAMS W8A8 network's error on it (MSE over the HR pixels the
patch fills); Spearman's rank correlation of FAB with each, a scatter plot, and the bit maps of two photos. For the
backbones in ``--quality`` also fixed-bit PAMS networks (``--fixed-bits``, trained from the same FP network for as
many iterations as PAMS W8A8 + CADyQ) and CADyQ at ``--quality-targets``: PSNR / SSIM on the held-out photos
against FAB (plot and table).

Writes ``<workdir>/evidence.json`` and ``evidence.md`` and the figures under ``--figures`` (``budget_fab.png``: FAB
against iteration of the budget runs; ``content_scatter.png``, ``bit_maps.png``, ``psnr_fab.png``).
"""
import argparse
import json
import os
import sys
import time

import numpy as np

from cadyq_plugin.tools import budget_evidence
from cadyq_plugin.tools.derive_options import derive_options, load_options
from cadyq_plugin.tools.quickstart import BACKBONE_OPTIONS, OPTIONS, build_data, stage_overrides

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCALE = 4
PATCHWISE = {'patch': 96, 'step': 90, 'batch': 4}  # the reference's patch-wise inference (LR pixels)
BIT_MAP_PHOTOS = ['retina', 'hubble']
NAMES = {'edsr': 'EDSR-baseline', 'carn': 'CARN', 'idn': 'IDN', 'srresnet': 'SRResNet'}


def heldout_photos(names=None):
    """``{name: RGB uint8 image}``: the bundled photos the quickstart does not train on (grey ones as RGB), or those
    of them in ``names``."""
    from skimage import data
    photos = {'motorcycle': data.stereo_motorcycle()[0], 'hubble': data.hubble_deep_field(), 'retina': data.retina(),
              'colorwheel': data.colorwheel()}
    for name in ('camera', 'moon', 'coins', 'brick', 'grass', 'gravel', 'cell', 'page', 'text'):
        photos[name] = np.repeat(getattr(data, name)()[:, :, None], 3, axis=2)
    return {name: np.ascontiguousarray(img[:, :, :3]) for name, img in photos.items() if names is None or name in names}


HELDOUT = ('motorcycle', 'hubble', 'retina', 'colorwheel', 'camera', 'moon', 'coins', 'brick', 'grass', 'gravel',
           'cell', 'page', 'text')


def build_heldout(workdir, names=HELDOUT):
    """``<workdir>/heldout/HR`` (mod-cropped) and ``LR`` (MATLAB bicubic x4) of the held-out photos ``names``,
    built once; returns the two folders."""
    from cadyq_plugin.data.folder_steps import make_lr
    from cadyq_plugin.data.image_io import write_png
    from cadyq_plugin.data.transforms import mod_crop
    hr, lr = (os.path.join(workdir, 'heldout', sub) for sub in ('HR', 'LR'))
    os.makedirs(hr, exist_ok=True)
    for name, img in heldout_photos(names).items():
        path = os.path.join(hr, f'{name}.png')
        if not os.path.isfile(path):
            write_png(path, mod_crop(img[:, :, ::-1], SCALE))
    make_lr(hr, lr, SCALE, reuse=True, partial='redo')
    return hr, lr


def load_pairs(hr_folder, lr_folder, names=HELDOUT):
    """``[(name, HR BGR uint8, LR tensor [1, 3, h, w] RGB in [0, 1])]`` of the held-out photos ``names``."""
    import cv2
    from basicsr.utils import img2tensor
    pairs = []
    for file in sorted(f'{name}.png' for name in names):
        hr = cv2.imread(os.path.join(hr_folder, file), cv2.IMREAD_COLOR)
        lr = cv2.imread(os.path.join(lr_folder, file), cv2.IMREAD_COLOR).astype(np.float32) / 255.0
        pairs.append((os.path.splitext(file)[0], hr, img2tensor(lr, bgr2rgb=True, float32=True)[None]))
    return pairs


def load_network(options_path, experiment_dir):
    """The network of a training options file with its ``net_g_latest.pth``, in eval mode."""
    import torch
    from basicsr.archs import build_network
    net = build_network(load_options(options_path)['network_g'])
    state = torch.load(os.path.join(experiment_dir, 'models', 'net_g_latest.pth'), map_location='cpu',
                       weights_only=True)
    net.load_state_dict(state['params'])
    return net.eval()


def evaluate(net, pairs, patchwise=PATCHWISE):
    """Patch-wise inference of every pair: per image PSNR / SSIM (Y, border 4) / FAB, per patch FAB, mean image
    gradient and squared error (sum over the HR pixels it fills, to combine with another network's)."""
    from basicsr.metrics import calculate_psnr, calculate_ssim
    from basicsr.utils import tensor2img

    from cadyq_plugin.data.patches import patch_boxes
    from cadyq_plugin.inference import super_resolve
    from cadyq_plugin.quant.image_feature import image_gradient_feature
    images, patches, outputs = [], [], {}
    for name, hr, lr in pairs:
        result = super_resolve(net, lr, patchwise)
        sr = tensor2img(result.output)  # BGR uint8, as BasicSR's validation
        outputs[name] = (sr, result.regions)
        boxes = patch_boxes(lr.shape[2], lr.shape[3], patchwise['patch'], patchwise['step'])
        fabs = [float(f['bits'].float().mean()) if f['bits'].numel() else None for f in result.forwards]
        for (y0, y1, x0, x1), region, fab in zip(boxes, result.regions, fabs):
            r0, r1, c0, c1 = region
            diff = sr[r0:r1, c0:c1].astype(np.float64) - hr[r0:r1, c0:c1].astype(np.float64)
            patches.append({'photo': name, 'fab': fab, 'pixels': diff[..., 0].size,
                            'gradient': float(image_gradient_feature(lr[:, :, y0:y1, x0:x1]).sum()),
                            'sq_error': float((diff**2).mean(axis=2).sum())})
        images.append({'photo': name, 'psnr': calculate_psnr(sr, hr, SCALE, test_y_channel=True),
                       'ssim': calculate_ssim(sr, hr, SCALE, test_y_channel=True),
                       'fab': None if fabs[0] is None else float(np.mean(fabs))})
    return {'images': images, 'patches': patches}, outputs


def summary(evaluation):
    """Mean PSNR, SSIM and FAB over the photos (FAB: mean over images of each image's mean over patches)."""
    images = evaluation['images']
    fabs = [i['fab'] for i in images if i['fab'] is not None]
    return {'psnr': float(np.mean([i['psnr'] for i in images])), 'ssim': float(np.mean([i['ssim'] for i in images])),
            'fab': float(np.mean(fabs)) if fabs else None}


def content_relation(cadyq, pams8):
    """Spearman's rho (and p) of the per-patch FAB against the mean image gradient and the PAMS W8A8 MSE."""
    from scipy.stats import spearmanr
    fab = [p['fab'] for p in cadyq['patches']]
    gradient = [p['gradient'] for p in cadyq['patches']]
    error = [q['sq_error'] / q['pixels'] for q in pams8['patches']]
    rho_g, p_g = spearmanr(fab, gradient)
    rho_e, p_e = spearmanr(fab, error)
    return {'n_patches': len(fab), 'rho_gradient': float(rho_g), 'p_gradient': float(p_g),
            'rho_pams8_error': float(rho_e), 'p_pams8_error': float(p_e), 'fab_min': min(fab), 'fab_max': max(fab)}


def experiment_dir(workdir, name):
    return os.path.join(workdir, 'experiments', name)


def train_fixed_bit(arch, bits, iters, args, data, workdir):
    """A PAMS network with ``bits``-bit activations trained from the FP network (the PAMS stage's options)."""
    prefix, _ = BACKBONE_OPTIONS[arch]
    name = f'evidence_{arch}_pams{bits}_{iters}it'
    path = os.path.join(workdir, 'options', f'{name}.yml')
    overrides = stage_overrides(data, 'pams', iters, args.batch, args.gt_size)
    overrides.update(budget_evidence.network_overrides(args, 'pams', arch))
    overrides.update({'name': name, 'network_g.a_bits': bits, 'logger.use_tb_logger': False})
    derive_options(os.path.join(OPTIONS, f'{prefix}_pams.yml'), overrides, path)
    if not os.path.isfile(os.path.join(experiment_dir(workdir, name), 'models', 'net_g_latest.pth')):
        budget_evidence.run(['train', '-opt', path], workdir, os.path.join(workdir, f'train_{name}.log'))
    return path, experiment_dir(workdir, name)


def stage_paths(arch, stage, workdir):
    """Options file and experiment folder of the FP or PAMS W8A8 stage of the budget evidence."""
    prefix, _ = BACKBONE_OPTIONS[arch]
    path = os.path.join(workdir, 'options', f'{prefix}_{stage}.yml')
    return path, experiment_dir(workdir, load_options(path)['name'])


def budget_paths(arch, target, workdir):
    name = budget_evidence.run_name(arch, target, {})
    return os.path.join(workdir, 'options', f'{name}.yml'), experiment_dir(workdir, name)


# ------------------------------------------------------------------------------------------------ figures
def plot_content(relations, evaluations, path):
    """Per backbone: per-patch FAB against the mean image gradient and against the PAMS W8A8 MSE."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    archs = list(relations)
    fig, axes = plt.subplots(2, len(archs), figsize=(3.6 * len(archs), 6.4), squeeze=False)
    for col, arch in enumerate(archs):
        cadyq, pams8 = evaluations[arch]
        fab = [p['fab'] for p in cadyq['patches']]
        rel = relations[arch]
        for row, (values, label, rho) in enumerate((
                ([p['gradient'] for p in cadyq['patches']], 'mean image gradient of the LR patch',
                 rel['rho_gradient']),
                ([q['sq_error'] / q['pixels'] for q in pams8['patches']], 'PAMS W8A8 MSE on the patch',
                 rel['rho_pams8_error']))):
            ax = axes[row][col]
            ax.scatter(values, fab, s=14, alpha=0.7)
            ax.set_xscale('log')
            ax.set_xlabel(label, fontsize=8)
            ax.set_ylabel('patch FAB (bits)', fontsize=8)
            ax.set_title(f'{NAMES[arch]} (target {rel["target"]:g}): rho {rho:+.2f}', fontsize=9)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_bit_maps(maps, path, width=360):
    """The bit maps (overlay of each patch's FAB on the SR image) of two photos per backbone, one row each."""
    import cv2
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    archs = list(maps)
    columns = max(len(m) for m in maps.values())
    fig, axes = plt.subplots(len(archs), columns, figsize=(3.3 * columns, 3.5 * len(archs)), squeeze=False)
    for row, arch in enumerate(archs):
        for col, (photo, image, target) in enumerate(maps[arch]):
            small = cv2.resize(image, (width, round(image.shape[0] * width / image.shape[1])),
                               interpolation=cv2.INTER_AREA)
            axes[row][col].imshow(small[:, :, ::-1])
            axes[row][col].set_title(f'{NAMES[arch]} (target {target:g}): {photo}', fontsize=9)
            axes[row][col].axis('off')
    fig.tight_layout()
    _save(fig, path)


def plot_quality(quality, path):
    """PSNR against FAB on the held-out photos: CADyQ points and the fixed-bit PAMS line, per backbone."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    archs = list(quality)
    fig, axes = plt.subplots(1, len(archs), figsize=(5.2 * len(archs), 3.8), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        fixed = sorted(quality[arch]['fixed'], key=lambda r: r['bits'])
        ax.plot([r['bits'] for r in fixed], [r['psnr'] for r in fixed], 'o-', color='tab:gray',
                label='PAMS, fixed bits')
        for r in fixed:
            ax.annotate(f'{r["bits"]}-bit', (r['bits'], r['psnr']), fontsize=7, xytext=(3, -9),
                        textcoords='offset points')
        points = quality[arch]['cadyq']
        ax.plot([r['fab'] for r in points], [r['psnr'] for r in points], 's', color='tab:red', label='CADyQ')
        for r in points:
            ax.annotate(f'target {r["target"]:g}', (r['fab'], r['psnr']), fontsize=7, xytext=(3, 3),
                        textcoords='offset points')
        if quality[arch].get('fp') is not None:
            ax.axhline(quality[arch]['fp'], color='tab:blue', linestyle='--', linewidth=0.8, label='FP')
        ax.set_xlabel('FAB on the held-out photos (bits)')
        ax.set_ylabel('PSNR (dB, Y)')
        ax.set_title(f'{NAMES[arch]} x4, held-out photos, patch-wise 96/90', fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path):
    import matplotlib.pyplot as plt
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ tables
def format_budget_table(rows):
    lines = ['| backbone | target FAB | train FAB (last 20 %) | network FAB, training photos | within tolerance | '
             'val FAB, quickstart crops | FAB, held-out photos (patch-wise) |', '|---|---:|---:|---:|:---:|---:|---:|']
    for r in rows:
        lines.append(f'| {NAMES[r["arch"]]} | {r["target"]:.2f} | {r["train_fab"]:.2f} | {r["net_fab"]:.2f} | '
                     f'{"yes" if budget_evidence.within(r) else "no"} | {r["val_fab"]:.2f} | {r["heldout_fab"]:.2f} |')
    return '\n'.join(lines)


def format_content_table(rows):
    lines = ['| backbone | target FAB | patches | patch FAB range | rho(FAB, image gradient) | '
             'rho(FAB, PAMS W8A8 error) |', '|---|---:|---:|---|---:|---:|']
    for r in rows:
        lines.append(f'| {NAMES[r["arch"]]} | {r["target"]:.2f} | {r["n_patches"]} | {r["fab_min"]:.2f} - '
                     f'{r["fab_max"]:.2f} | {r["rho_gradient"]:+.2f} (p {r["p_gradient"]:.2g}) | '
                     f'{r["rho_pams8_error"]:+.2f} (p {r["p_pams8_error"]:.2g}) |')
    return '\n'.join(lines)


def format_quality_table(quality):
    lines = ['| backbone | network | FAB | PSNR (dB) | SSIM |', '|---|---|---:|---:|---:|']
    for arch, q in quality.items():
        for r in sorted(q['fixed'], key=lambda r: r['bits']):
            lines.append(f'| {NAMES[arch]} | PAMS {r["bits"]}-bit | {r["bits"]:.2f} | {r["psnr"]:.2f} | '
                         f'{r["ssim"]:.4f} |')
        for r in q['cadyq']:
            lines.append(f'| {NAMES[arch]} | CADyQ, target {r["target"]:g} | {r["fab"]:.2f} | {r["psnr"]:.2f} | '
                         f'{r["ssim"]:.4f} |')
    return '\n'.join(lines)


# ------------------------------------------------------------------------------------------------ the run
def run_evidence(args):
    import torch
    from cadyq_plugin.reporting import render_bit_map
    started = time.time()
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    data = build_data(workdir)[0]
    pairs = load_pairs(*build_heldout(workdir, args.photos), args.photos)
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', torch.get_num_threads())))
    budget_args = argparse.Namespace(batch=args.batch, gt_size=args.gt_size, bit_opt=[], tail=args.tail,
                                     network=args.network)
    budget_rows, curves, content_rows, evaluations, maps, quality = [], [], [], {}, {}, {}
    for arch in args.archs:
        targets = sorted(set(args.targets) | (set(args.quality_targets) if arch in args.quality else set()))
        results = budget_evidence.run_backbone(arch, targets, args.iters, budget_args, data, workdir)
        pams8 = evaluate(load_network(*stage_paths(arch, 'pams', workdir)), pairs)[0]
        cadyq = {}
        for result in results:
            evaluation, outputs = evaluate(load_network(*budget_paths(arch, result['target'], workdir)), pairs)
            cadyq[result['target']] = evaluation
            heldout = summary(evaluation)
            relation = {'arch': arch, 'target': result['target'], **content_relation(evaluation, pams8)}
            if result['target'] in args.targets:
                curves.append(result)
                budget_rows.append({**{k: v for k, v in result.items() if k not in ('curve', 'validations')},
                                    'arch': arch, 'heldout_fab': heldout['fab'], 'heldout_psnr': heldout['psnr']})
                content_rows.append(relation)
            if result['target'] == args.content_target:
                evaluations[arch] = (evaluation, pams8)
                maps[arch] = [(photo, render_bit_map(outputs[photo][0], outputs[photo][1],
                                                     [p['fab'] for p in evaluation['patches'] if p['photo'] == photo]),
                               result['target']) for photo in args.bit_map_photos]
        if arch in args.quality:
            fixed = []
            for bits in args.fixed_bits:
                network = train_fixed_bit(arch, bits, args.iters[1] + args.iters[2], args, data, workdir)
                fixed.append({'bits': bits, **summary(evaluate(load_network(*network), pairs)[0])})
            fp = evaluate(load_network(*stage_paths(arch, 'fp', workdir)), pairs)[0]
            quality[arch] = {'fixed': fixed, 'fp': summary(fp)['psnr'],
                             'cadyq': [{'target': t, **summary(cadyq[t])} for t in args.quality_targets]}
        print(f'[evidence] {arch}: done ({time.time() - started:.0f} s)', flush=True)
        report = write_results(args, workdir, time.time() - started, curves, budget_rows, content_rows, evaluations,
                               maps, quality)
    print(f'wall time: {report["seconds"]:.0f} s; figures in {os.path.abspath(args.figures)}')
    return report


def write_results(args, workdir, seconds, curves, budget_rows, content_rows, evaluations, maps, quality):
    """The tables (``evidence.md``, printed), ``evidence.json`` and the figures of the backbones done so far
    (written after each one, so a run stopped later keeps them)."""
    relations = {r['arch']: r for r in content_rows if r['target'] == args.content_target}
    figures = os.path.abspath(args.figures)
    budget_evidence.plot(curves, os.path.join(figures, 'budget_fab.png'))
    plot_content(relations, evaluations, os.path.join(figures, 'content_scatter.png'))
    plot_bit_maps(maps, os.path.join(figures, 'bit_maps.png'))
    if quality:
        plot_quality(quality, os.path.join(figures, 'psnr_fab.png'))
    report = {'args': {k: v for k, v in vars(args).items()}, 'seconds': seconds,
              'budget': budget_rows, 'content': content_rows, 'quality': quality}
    tables = '\n\n'.join([format_budget_table(budget_rows), format_content_table(content_rows)] +
                         ([format_quality_table(quality)] if quality else []))
    with open(os.path.join(workdir, 'evidence.json'), 'w') as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(workdir, 'evidence.md'), 'w') as f:
        f.write(tables + f'\n\nwall time: {seconds:.0f} s\n')
    print(tables, flush=True)
    return report


def network_setting(text):
    """``[ARCH:]KEY=VALUE`` of ``--network``: an integer arch argument (sizes) for ``ARCH`` or every backbone;
    ``(arch or None, key, value)``."""
    arch, sep, setting = text.rpartition(':')
    key, sep, value = setting.partition('=')
    if not sep or not key.isidentifier() or not value.isdigit() or (arch and arch not in BACKBONE_OPTIONS):
        raise argparse.ArgumentTypeError(
            f'{text!r}: expected [ARCH:]KEY=INTEGER, an arch argument such as num_block=4 or edsr:num_feat=32 '
            f'(ARCH one of {", ".join(sorted(BACKBONE_OPTIONS))})')
    return arch or None, key, int(value)


def network_settings(settings):
    """``{arch or None: {key: value}}`` of the parsed ``--network`` settings."""
    network = {}
    for arch, key, value in settings:
        network.setdefault(arch, {})[key] = value
    return network


def build_parser():
    parser = argparse.ArgumentParser(prog='basicsr evidence', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--archs', nargs='+', choices=sorted(BACKBONE_OPTIONS), default=['edsr', 'carn', 'idn',
                                                                                          'srresnet'])
    parser.add_argument('--targets', type=float, nargs='+', default=[5.0, 6.0, 7.0], help='the budget table')
    parser.add_argument('--content-target', type=float, default=6.0,
                        help='the target whose networks the scatter plots and bit maps show')
    parser.add_argument('--quality', nargs='*', choices=sorted(BACKBONE_OPTIONS), default=['edsr'],
                        help='backbones compared with fixed-bit PAMS networks')
    parser.add_argument('--quality-targets', type=float, nargs='*', default=[4.5, 5.0, 5.5, 6.0])
    parser.add_argument('--fixed-bits', type=int, nargs='*', default=[4, 6, 8])
    parser.add_argument('--iters', type=int, nargs=3, default=(300, 150, 300), metavar=('FP', 'PAMS', 'CADYQ'))
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--gt-size', type=int, default=64, help='HR training patch size')
    parser.add_argument('--tail', type=float, default=0.2, help='fraction of the run the training FAB is averaged '
                        'over')
    parser.add_argument('--network', nargs='*', type=network_setting, default=[], metavar='[ARCH:]KEY=VALUE',
                        help='arch arguments of every stage, for one backbone (edsr:num_feat=32) or all '
                        '(num_block=4), for a quicker run (default: the reference networks)')
    parser.add_argument('--photos', nargs='+', choices=HELDOUT, default=list(HELDOUT), help='held-out photos')
    parser.add_argument('--bit-map-photos', nargs='+', default=BIT_MAP_PHOTOS, help='the photos of the bit maps')
    parser.add_argument('--workdir', default='evidence_workdir', help='runs, logs and tables')
    parser.add_argument('--figures', default=os.path.join(REPO, 'docs', 'evidence'))
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.network = network_settings(args.network)
    if args.content_target not in args.targets:
        parser.error(f'--content-target {args.content_target:g} must be one of --targets')
    if not set(args.bit_map_photos) <= set(args.photos):
        parser.error(f'--bit-map-photos {args.bit_map_photos} must be among --photos')
    import cadyq_plugin  # noqa: F401
    run_evidence(args)
    return 0


if __name__ == '__main__':
    sys.exit(main())
