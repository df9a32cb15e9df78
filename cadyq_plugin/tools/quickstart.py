"""The quickstart: FP -> PAMS -> CADyQ through ``basicsr train`` on a small set built from scikit-image
photos, then ``basicsr test`` of each stage and a table of PSNR, SSIM, FAB and BitOPs.

It runs the repository's reference options files with only data paths, sizes and iteration counts changed.
"""
import argparse
import contextlib
import os
import subprocess
import sys
import time

from cadyq_plugin.tools.derive_options import derive_options, load_options

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPTIONS = os.path.join(REPO, 'options')
STAGES = ('fp', 'pams', 'cadyq')
# backbone -> (training options prefix, image-wise test options)
BACKBONE_OPTIONS = {
    'edsr': ('train_edsrbaseline', 'test_cadyq_image.yml'),
    'carn': ('train_carn', 'test_carn_cadyq_image.yml'),
    'idn': ('train_idn', 'test_idn_cadyq_image.yml'),
    'srresnet': ('train_srresnet', 'test_srresnet_cadyq_image.yml'),
}


def stage_overrides(data, stage, iters, batch, gt_size):
    """Option changes that turn a reference training file into a quickstart run."""
    overrides = {
        'datasets.train.dataroot_gt': str(data['train_gt_lmdb']),
        'datasets.train.dataroot_lq': str(data['train_lq_lmdb']),
        'datasets.train.gt_size': gt_size,
        'datasets.train.batch_size_per_gpu': batch,
        'datasets.train.num_worker_per_gpu': 1,
        'datasets.val.name': 'quickstart_val',
        'datasets.val.dataroot_gt': str(data['val_gt']),
        'datasets.val.dataroot_lq': str(data['val_lq']),
        'train.total_iter': iters,
        'train.scheduler.milestones': [iters * 2 // 3],
        'val.val_freq': iters,
        'logger.print_freq': max(1, iters // 5),
        'logger.save_checkpoint_freq': iters,
    }
    if stage != 'fp':
        overrides['network_g.calib_iters'] = max(1, iters // 10)
    if stage == 'cadyq':  # compress the growth of the bit-loss weight into the short run
        overrides['train.bit_opt.growth_every'] = max(1, iters // 10)
    return overrides


def run(command, cwd, log_path):
    """Run a ``basicsr`` command, its output going to ``log_path``; stop the quickstart if it fails."""
    start = time.time()
    with open(log_path, 'w') as log:
        result = subprocess.run([sys.executable, '-m', 'cadyq_plugin.cli'] + command, cwd=cwd, stdout=log,
                                stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = open(log_path).read()[-3000:]
        raise SystemExit(f'`basicsr {" ".join(command)}` failed (exit {result.returncode}); log {log_path}:\n'
                         f'{tail}')
    return time.time() - start


def test_overrides(data, stage, train_opt_path, test_opt_path, name):
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


def read_mean_row(csv_path):
    import csv
    rows = list(csv.reader(open(csv_path)))
    header, mean = rows[0], rows[-1]
    return dict(zip(header, mean))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--arch', choices=sorted(BACKBONE_OPTIONS), default='edsr')
    parser.add_argument('--workdir', default='quickstart_workdir', help='everything is written under here')
    parser.add_argument('--iters', type=int, nargs=3, default=(300, 150, 150), metavar=('FP', 'PAMS', 'CADYQ'))
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--gt-size', type=int, default=64, help='HR training patch size')
    args = parser.parse_args(argv)

    import cadyq_plugin  # noqa: F401
    from cadyq_plugin.data.quickstart_data import build_quickstart_data
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    print(f'[quickstart] data: building a small DIV2K-style set from scikit-image photos in {workdir}/data')
    with open(os.path.join(workdir, 'data.log'), 'w') as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        data = build_quickstart_data(os.path.join(workdir, 'data'))
    prefix, test_file = BACKBONE_OPTIONS[args.arch]
    rows = []
    for stage, iters in zip(STAGES, args.iters):
        train_opt = os.path.join(workdir, 'options', f'{prefix}_{stage}.yml')
        derive_options(os.path.join(OPTIONS, f'{prefix}_{stage}.yml'),
                       stage_overrides(data, stage, iters, args.batch, args.gt_size), train_opt)
        seconds = run(['train', '-opt', train_opt], workdir, os.path.join(workdir, f'train_{stage}.log'))
        print(f'[quickstart] basicsr train -opt {os.path.relpath(train_opt, workdir)}: {iters} iterations, '
              f'{seconds:.0f} s')
        name = f'quickstart_{args.arch}_{stage}'
        test_opt = os.path.join(workdir, 'options', f'test_{args.arch}_{stage}.yml')
        test_base = os.path.join(OPTIONS, test_file)
        derive_options(test_base, test_overrides(data, stage, train_opt, test_base, name), test_opt)
        seconds = run(['test', '-opt', test_opt], workdir, os.path.join(workdir, f'test_{stage}.log'))
        print(f'[quickstart] basicsr test -opt {os.path.relpath(test_opt, workdir)}: {seconds:.0f} s')
        mean = read_mean_row(os.path.join(workdir, 'results', name, 'quickstart_val_results.csv'))
        rows.append((stage, mean))
    print(format_table(args.arch, rows))
    return 0


def format_table(arch, rows):
    lines = [f'\n{arch} x4 on the quickstart validation images (Y-channel PSNR/SSIM, BitOPs per image):',
             '| stage | PSNR (dB) | SSIM | FAB | BitOPs (G) |', '|---|---:|---:|---:|---:|']
    for stage, mean in rows:
        fab = mean.get('FAB') or '32 (FP)'
        lines.append(f'| {stage} | {mean["PSNR (dB)"]} | {mean["SSIM"]} | {fab} | {mean["BitOPs (G)"]} |')
    return '\n'.join(lines)


if __name__ == '__main__':
    sys.exit(main())
