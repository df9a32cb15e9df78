"""Folder-to-folder preparation steps applied image by image: HR of a test set, bicubic LR.

Each step reads with :func:`read_image` (so odd inputs are normalised the same way everywhere), writes PNGs
and is guarded by :func:`build_output` (refuses or reuses existing outputs by their manifest, resumes or redoes
interrupted ones).
"""
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from cadyq_plugin.data.image_io import PathLike, image_size, list_images, read_image, write_png
from cadyq_plugin.data.manifest import make_manifest
from cadyq_plugin.data.outputs import build_output
from cadyq_plugin.data.transforms import bicubic_downsample, mod_crop
from cadyq_plugin.errors import InputError, InputNotFoundError


def process_images(paths: Sequence[Path], output_folder: PathLike, transform: Callable[[np.ndarray], np.ndarray],
                   options: Dict, name_tmpl: str = '{}', desc: str = 'images', compress_level: int = 3,
                   **safety) -> Path:
    """Write ``transform(read_image(p))`` for every path as ``<output_folder>/<name_tmpl.format(stem)>.png``.

    Args:
        options: What shapes ``transform`` (JSON values), recorded in the manifest with the source files.
        **safety: ``overwrite`` / ``partial`` / ``reuse``, see :mod:`cadyq_plugin.data.outputs`.
    """
    paths = list(paths)

    def write(staging):
        for path in tqdm(paths, desc=desc, unit='img'):
            target = staging / (name_tmpl.format(path.stem) + '.png')
            if not target.exists():  # present only when resuming, and then complete (atomic writes)
                write_png(target, transform(read_image(path)), compress_level)

    manifest = make_manifest({'input': paths}, name_tmpl=name_tmpl, compress_level=compress_level, **options)
    return build_output(output_folder, manifest, write, **safety)


def make_hr(input_folder: PathLike, output_folder: PathLike, scale: int, downsample: int = 1,
            paths: Optional[Sequence[Path]] = None, **safety) -> Path:
    """HR images of a test set: optionally bicubic-downsampled by ``downsample`` (DIV8K -> Test2K/4K), then
    mod-cropped to ``scale`` and saved as PNG under the same base names.

    Args:
        paths: Only these images of ``input_folder`` (default: all of them).
        **safety: ``overwrite`` / ``partial`` / ``reuse``, see :mod:`cadyq_plugin.data.outputs`.
    """

    def transform(img):
        if downsample > 1:
            img = bicubic_downsample(mod_crop(img, downsample), downsample)
        return mod_crop(img, scale)

    paths = list_images(input_folder) if paths is None else list(paths)
    return process_images(paths, output_folder, transform, {'kind': 'hr', 'scale': scale, 'downsample': downsample},
                          desc=f'HR {Path(output_folder).parent.name}', **safety)


def make_lr(hr_folder: PathLike, lr_folder: PathLike, scale: int, name_tmpl: str = '{}', **safety) -> Path:
    """Bicubic LR x``scale`` of every HR image: MATLAB ``imresize(mod_crop(hr, scale), 1/scale)``.

    Args:
        name_tmpl: LR base name from the HR base name: ``'{}'`` for benchmark sets (BasicSR ``filename_tmpl:
            '{}'``), ``'{}x4'`` for DIV2K's own naming (``0001x4.png``, ``filename_tmpl: '{}x4'``).
        **safety: ``overwrite`` / ``partial`` / ``reuse``, see :mod:`cadyq_plugin.data.outputs`.
    """

    def transform(img):
        return bicubic_downsample(mod_crop(img, scale), scale)

    return process_images(list_images(hr_folder), lr_folder, transform, {'kind': 'lr', 'scale': scale}, name_tmpl,
                          f'LR x{scale}', **safety)


def pair_given_lr(hr_paths: Sequence[Path], given_folder: PathLike, scale: int) -> List[Tuple[Path, Path]]:
    """Pair each HR image with its file in a downloaded LR folder: ``<base>.*`` or ``<base>x<scale>.*``."""
    given = {p.stem: p for p in list_images(given_folder)}
    pairs = []
    for hr in hr_paths:
        lr = given.get(hr.stem, given.get(f'{hr.stem}x{scale}'))
        if lr is None:
            raise InputNotFoundError(f'{given_folder}: no LR image for {hr}; expected {hr.stem}.png or '
                                     f'{hr.stem}x{scale}.png (or another image extension)')
        pairs.append((hr, lr))
    return pairs


def check_lr_size(hr_path: Path, lr_path: Path, scale: int) -> None:
    """Raise unless ``lr_path`` has the size of the bicubic LR of ``hr_path`` mod-cropped to ``scale``."""
    hr_h, hr_w = image_size(hr_path)
    lr_h, lr_w = image_size(lr_path)
    want = (hr_h // scale, hr_w // scale)
    if (lr_h, lr_w) != want:
        raise InputError(f'{lr_path}: size {lr_h}x{lr_w} does not match its HR {hr_path} ({hr_h}x{hr_w}); expected '
                         f'{want[0]}x{want[1]} (HR mod-cropped to x{scale}, divided by {scale}). Leave out the LR '
                         f'folder to have the LR images made from HR')


def copy_given_lr(given_folder: PathLike, hr_folder: PathLike, lr_folder: PathLike, scale: int,
                  name_tmpl: str = '{}', **safety) -> Path:
    """Bring downloaded LR images into our layout: paired to HR by base name, size-checked, saved as PNG.

    Args:
        hr_folder: The (mod-cropped) HR images the LR must pair with.
        **safety: ``overwrite`` / ``partial`` / ``reuse``, see :mod:`cadyq_plugin.data.outputs`.
    """
    pairs = pair_given_lr(list_images(hr_folder), given_folder, scale)
    for hr, lr in pairs:
        check_lr_size(hr, lr, scale)

    def write(staging):
        for hr, lr in tqdm(pairs, desc=f'LR x{scale} (given)', unit='img'):
            target = staging / (name_tmpl.format(hr.stem) + '.png')
            if not target.exists():
                write_png(target, read_image(lr))

    manifest = make_manifest({'lr': [lr for _, lr in pairs], 'hr': [hr for hr, _ in pairs]}, kind='given lr',
                             scale=scale, name_tmpl=name_tmpl)
    return build_output(lr_folder, manifest, write, **safety)
