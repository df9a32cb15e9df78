"""DIV2K training data the way BasicSR's recipe lays it out: sub-images packed into LMDBs.

Layout (``root`` defaults to ``datasets``; the HR source folder is only read)::

    <root>/DIV2K/DIV2K_train_LR_bicubic/X4/0001x4.png     only when no LR folder is given: imresize(HR)
    <root>/DIV2K/DIV2K_train_HR_sub/0001_s001.png         HR crops 480, step 240, threshold 0
    <root>/DIV2K/DIV2K_train_LR_bicubic_X4_sub/0001_s001.png   LR crops 480/s, step 240/s
    <root>/DIV2K/DIV2K_train_HR_sub.lmdb                  keys 0001_s001, ... + meta_info.txt
    <root>/DIV2K/DIV2K_train_LR_bicubic_X4_sub.lmdb       same keys

(X2 and X3 alike when those scales are asked for; they share the HR sub-images.) HR is mod-cropped to the
least common multiple of the scales before cropping, and each LR to that multiple divided by its scale, so the
sub-images of every scale pair up with the same HR sub-image. Downloaded LR folders (DIV2K's own ``0001x4.png``)
are size-checked against HR and cropped in place of made ones. Train with ``io_backend: {type: lmdb}``,
``dataroot_gt`` = the HR LMDB, ``dataroot_lq`` = the LR LMDB.
"""
import math
from functools import reduce
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

from cadyq_plugin.data.folder_steps import check_lr_size, make_lr, pair_given_lr
from cadyq_plugin.data.image_io import PathLike, list_images
from cadyq_plugin.data.lmdb_writer import make_lmdb
from cadyq_plugin.data.subimages import extract_subimages
from cadyq_plugin.errors import InputError


def div2k_paths(root: PathLike, scales: Sequence[int]) -> Dict[str, object]:
    """Output paths of :func:`prepare_div2k`; LR entries are dicts keyed by scale."""
    base = Path(root) / 'DIV2K'
    return {
        'hr_sub': base / 'DIV2K_train_HR_sub',
        'hr_sub_lmdb': base / 'DIV2K_train_HR_sub.lmdb',
        'lr': {s: base / 'DIV2K_train_LR_bicubic' / f'X{s}' for s in scales},
        'lr_sub': {s: base / f'DIV2K_train_LR_bicubic_X{s}_sub' for s in scales},
        'lr_sub_lmdb': {s: base / f'DIV2K_train_LR_bicubic_X{s}_sub.lmdb' for s in scales},
    }


def prepare_div2k(hr_folder: PathLike, root: PathLike = 'datasets', scales: Sequence[int] = (4, ),
                  lr_folders: Optional[Mapping[int, PathLike]] = None, crop_size: int = 480, step: int = 240,
                  thresh_size: int = 0, overwrite: bool = False, partial: Optional[str] = None) -> Dict[str, object]:
    """HR (+ optional bicubic LR folders) -> LR if missing -> sub-images -> LMDBs.

    Args:
        hr_folder: ``DIV2K_train_HR`` (0001-0800).
        scales: Scales to prepare; ``crop_size``, ``step`` and ``thresh_size`` must be divisible by each.
        lr_folders: ``{scale: DIV2K_train_LR_bicubic/X<scale>}`` for downloaded LR; other scales are made.
        crop_size, step, thresh_size: HR sub-image cropping (BasicSR: 480, 240, 0).
        overwrite, partial: See :mod:`cadyq_plugin.data.outputs`; complete, up-to-date steps are reused unless
            ``overwrite``, a step whose sources or options changed is refused unless ``partial='redo'``.

    Returns:
        The paths of :func:`div2k_paths`.
    """
    scales = sorted(set(int(s) for s in scales))
    lr_folders = {int(s): Path(p) for s, p in (lr_folders or {}).items()}
    if not scales or any(s < 1 for s in scales):
        raise InputError(f'scales must be positive integers, got {scales}')
    if set(lr_folders) - set(scales):
        raise InputError(f'LR folders given for scales {sorted(set(lr_folders) - set(scales))} not in {scales}')
    for s in scales:
        if crop_size % s or step % s or thresh_size % s:
            raise InputError(f'crop_size {crop_size}, step {step} and thresh_size {thresh_size} must be divisible '
                             f'by every scale, not by {s}')
    lcm = reduce(lambda a, b: a * b // math.gcd(a, b), scales)
    out = div2k_paths(root, scales)
    safety = dict(overwrite=overwrite, partial=partial, reuse=True)
    hr_paths = list_images(hr_folder)

    given_lr = {}
    for s in scales:
        if s in lr_folders:
            pairs = pair_given_lr(hr_paths, lr_folders[s], s)
            for hr, lr in pairs:
                check_lr_size(hr, lr, s)
            given_lr[s] = [lr for _, lr in pairs]
        else:
            make_lr(hr_folder, out['lr'][s], s, f'{{}}x{s}', **safety)
    extract_subimages(hr_folder, out['hr_sub'], crop_size, step, thresh_size, mod=lcm, **safety)
    make_lmdb(out['hr_sub'], out['hr_sub_lmdb'], **safety)
    for s in scales:
        extract_subimages(lr_folders.get(s, out['lr'][s]), out['lr_sub'][s], crop_size // s, step // s,
                          thresh_size // s, mod=lcm // s, strip_suffix=f'x{s}', paths=given_lr.get(s), **safety)
        make_lmdb(out['lr_sub'][s], out['lr_sub_lmdb'][s], **safety)
    return out
