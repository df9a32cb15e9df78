"""A tiny SR data set from the photos shipped with scikit-image, so the quickstart runs without downloads.

It goes through the same steps as DIV2K (HR -> bicubic LR -> sub-images -> LMDBs) and the same layout as the
benchmark sets for validation, only small::

    <root>/train/HR/<photo>.png, <root>/train/LR_bicubic/X<s>/<photo>.png   whole photos, HR mod-cropped
    <root>/train_HR_sub/<photo>_s001.png, <root>/train_LR_X<s>_sub/...      HR crops 192, step 96
    <root>/train_HR_sub.lmdb, <root>/train_LR_X<s>_sub.lmdb                  training LMDBs (same keys)
    <root>/val/HR/<photo>.png, <root>/val/LR_bicubic/X<s>/<photo>.png       2 centre crops of other photos

Training photos: astronaut, coffee, chelsea, rocket, immunohistochemistry; validation: the left motorcycle
view and the Hubble deep field, never used for training. Every step is reused when complete and up to date and
resumed when interrupted, so calling it again is cheap.
"""
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
from skimage import data as skdata

from cadyq_plugin.data.folder_steps import make_lr
from cadyq_plugin.data.image_io import PathLike, write_png
from cadyq_plugin.data.lmdb_writer import make_lmdb
from cadyq_plugin.data.manifest import make_manifest
from cadyq_plugin.data.outputs import build_output
from cadyq_plugin.data.subimages import extract_subimages
from cadyq_plugin.data.transforms import mod_crop
from cadyq_plugin.errors import InputError

TRAIN_PHOTOS: Tuple[Tuple[str, Callable[[], np.ndarray]], ...] = (
    ('astronaut', skdata.astronaut),
    ('coffee', skdata.coffee),
    ('chelsea', skdata.chelsea),
    ('rocket', skdata.rocket),
    ('immunohistochemistry', skdata.immunohistochemistry),
)
VAL_PHOTOS: Tuple[Tuple[str, Callable[[], np.ndarray]], ...] = (
    ('motorcycle', lambda: skdata.stereo_motorcycle()[0]),
    ('hubble', skdata.hubble_deep_field),
)


def _centre_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    size_h, size_w = min(size, h), min(size, w)
    top, left = (h - size_h) // 2, (w - size_w) // 2
    return img[top:top + size_h, left:left + size_w]


def _write_photos(folder: Path, photos: Sequence[Tuple[str, Callable[[], np.ndarray]]], scale: int,
                  crop: Optional[int], **safety) -> Path:
    """Save RGB photos as BGR PNGs, optionally centre-cropped, mod-cropped to ``scale``."""

    def write(staging):
        for name, load in photos:
            target = staging / f'{name}.png'
            if not target.exists():
                img = np.ascontiguousarray(load()[:, :, :3][:, :, ::-1])
                write_png(target, mod_crop(img if crop is None else _centre_crop(img, crop), scale))

    manifest = make_manifest({}, kind='photos', photos=[name for name, _ in photos], scale=scale, crop=crop)
    return build_output(folder, manifest, write, **safety)


def quickstart_paths(root: PathLike, scale: int = 4) -> Dict[str, Path]:
    root = Path(root)
    return {
        'train_hr': root / 'train' / 'HR',
        'train_lr': root / 'train' / 'LR_bicubic' / f'X{scale}',
        'train_gt_folder': root / 'train_HR_sub',
        'train_lq_folder': root / f'train_LR_X{scale}_sub',
        'train_gt_lmdb': root / 'train_HR_sub.lmdb',
        'train_lq_lmdb': root / f'train_LR_X{scale}_sub.lmdb',
        'val_gt': root / 'val' / 'HR',
        'val_lq': root / 'val' / 'LR_bicubic' / f'X{scale}',
    }


def build_quickstart_data(root: PathLike, scale: int = 4, crop_size: int = 192, step: int = 96, val_size: int = 128,
                          overwrite: bool = False, partial: Optional[str] = 'resume') -> Dict[str, Path]:
    """Build (or reuse) the quickstart data set under ``root``.

    Args:
        scale: SR scale; ``crop_size`` and ``step`` must be divisible by it.
        crop_size, step: HR sub-image size and stride.
        val_size: Side of the validation HR centre crops (then mod-cropped).
        overwrite, partial: See :mod:`cadyq_plugin.data.outputs`.

    Returns:
        The paths of :func:`quickstart_paths`: ``train_gt_lmdb``/``train_lq_lmdb`` for ``dataroot_gt/lq`` with
        ``io_backend: {type: lmdb}``, ``val_gt``/``val_lq`` folders for ``filename_tmpl: '{}'``.
    """
    if crop_size % scale or step % scale:
        raise InputError(f'crop_size {crop_size} and step {step} must be divisible by the scale {scale}')
    out = quickstart_paths(root, scale)
    safety = dict(overwrite=overwrite, partial=partial, reuse=True)
    _write_photos(out['train_hr'], TRAIN_PHOTOS, scale, None, **safety)
    make_lr(out['train_hr'], out['train_lr'], scale, **safety)
    extract_subimages(out['train_hr'], out['train_gt_folder'], crop_size, step, mod=scale, **safety)
    extract_subimages(out['train_lr'], out['train_lq_folder'], crop_size // scale, step // scale, **safety)
    make_lmdb(out['train_gt_folder'], out['train_gt_lmdb'], **safety)
    make_lmdb(out['train_lq_folder'], out['train_lq_lmdb'], **safety)
    _write_photos(out['val_gt'], VAL_PHOTOS, scale, val_size, **safety)
    make_lr(out['val_gt'], out['val_lq'], scale, **safety)
    return out
