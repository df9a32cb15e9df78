"""Tiny real data and derived options for tests that run the real ``basicsr`` command."""
import glob
import os
import re
import subprocess
import sys

import cv2
import numpy as np

import cadyq_plugin  # noqa: F401
from cadyq_plugin.tools.derive_options import derive_options

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS = os.path.join(REPO, 'options')
STAGE_NAMES = {'fp': 'fp', 'pams': 'pams', 'cadyq': 'cadyq'}
LOG_LINE = re.compile(r'iter:\s*(\d+),.*\] (l_pix: .*?)\s*$')


def make_tiny_pairs(root, scale=4, size=48, names=('astronaut', 'coffee', 'chelsea', 'rocket')):
    """HR crops of scikit-image photos and their MATLAB-bicubic LR, as ``root/HR`` and ``root/LR``."""
    import skimage.data
    from basicsr.utils.matlab_functions import imresize
    os.makedirs(os.path.join(root, 'HR'), exist_ok=True)
    os.makedirs(os.path.join(root, 'LR'), exist_ok=True)
    for name in names:
        img = getattr(skimage.data, name)()[..., :3]
        h, w = img.shape[:2]
        top, left = (h - size) // 2, (w - size) // 2
        hr = img[top:top + size, left:left + size].astype(np.float32) / 255.0
        lr = np.clip(imresize(hr, 1 / scale), 0, 1)
        cv2.imwrite(os.path.join(root, 'HR', f'{name}.png'), (hr[..., ::-1] * 255).round().astype(np.uint8))
        cv2.imwrite(os.path.join(root, 'LR', f'{name}.png'), (lr[..., ::-1] * 255).round().astype(np.uint8))
    return root


def tiny_stage_options(workdir, data_root, base_name, stage, total_iter=4, **overrides):
    """Derive ``options/<base_name>_<stage>.yml`` for a CPU run of a few iterations on ``data_root``."""
    base = os.path.join(OPTIONS, f'{base_name}_{stage}.yml')
    keys = {
        'num_gpu': 0,
        'datasets.train.dataroot_gt': os.path.join(data_root, 'HR'),
        'datasets.train.dataroot_lq': os.path.join(data_root, 'LR'),
        'datasets.train.filename_tmpl': '{}',
        'datasets.train.io_backend': {'type': 'disk'},
        'datasets.train.gt_size': 32,
        'datasets.train.batch_size_per_gpu': 2,
        'datasets.train.num_worker_per_gpu': 0,
        'datasets.val.dataroot_gt': os.path.join(data_root, 'HR'),
        'datasets.val.dataroot_lq': os.path.join(data_root, 'LR'),
        'train.total_iter': total_iter,
        'val.val_freq': 2,
        'logger.print_freq': 1,
        'logger.save_checkpoint_freq': 2,
    }
    if stage != 'fp':
        keys['network_g.calib_iters'] = 1
    keys.update(overrides)
    out = os.path.join(workdir, f'{base_name}_{stage}.yml')
    derive_options(base, keys, out)
    return out


def run_cli(args, cwd, extra_env=None, timeout=600):
    """Run the installed ``basicsr`` console command; return the CompletedProcess (output captured)."""
    env = dict(os.environ, **(extra_env or {}))
    cmd = [sys.executable, '-m', 'cadyq_plugin.cli'] + list(args)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def logged_losses(experiment_dir):
    """{iteration: [the logged 'l_pix: ... avg_bit: ...' text, once per log line]} over every training log of the
    experiment folder (a resumed run has several)."""
    values = {}
    for log in sorted(glob.glob(os.path.join(experiment_dir, 'train_*.log'))):
        with open(log) as f:
            for line in f:
                match = LOG_LINE.search(line)
                if match:
                    values.setdefault(int(match.group(1)), []).append(match.group(2))
    return values
