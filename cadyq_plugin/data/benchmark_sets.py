"""Test sets in the layout the test options expect: HR mod-cropped to the scale, bicubic LR with the same names.

Layout (``root`` defaults to ``datasets``)::

    <root>/benchmark/<Set>/HR/<name>.png                 HR, mod-cropped to the scale
    <root>/benchmark/<Set>/LR_bicubic/X<scale>/<name>.png MATLAB-bicubic LR of that HR

for ``<Set>`` in Set5, Set14, B100, Urban100 (any other name works too, e.g. DIV2K100 for DIV2K 0801-0900).
The LR has the HR's base name, so BasicSR's ``PairedImageDataset`` pairs them with ``filename_tmpl: '{}'``.
Sources may be any readable format (Set14 ships BMPs); everything is written as PNG. The LR is made with
BasicSR's ``imresize`` unless a downloaded LR folder is given, in which case its files (``<name>.*`` or
``<name>x<scale>.*``) are size-checked and copied. One scale per ``root``: HR mod-cropped to x4 is not the HR
of x3.
"""
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

from cadyq_plugin.data.folder_steps import copy_given_lr, make_hr, make_lr
from cadyq_plugin.data.image_io import PathLike, image_size, list_images
from cadyq_plugin.errors import InputError

BENCHMARK_SETS = ('Set5', 'Set14', 'B100', 'Urban100')


def eval_set_paths(set_dir: PathLike, scale: int) -> Dict[str, Path]:
    """``{'hr': <set_dir>/HR, 'lr': <set_dir>/LR_bicubic/X<scale>}``."""
    set_dir = Path(set_dir)
    return {'hr': set_dir / 'HR', 'lr': set_dir / 'LR_bicubic' / f'X{scale}'}


def _check_divisible(hr_folder: Path, scale: int) -> None:
    for path in list_images(hr_folder):
        h, w = image_size(path)
        if h % scale or w % scale:
            raise InputError(f'{path}: existing HR of size {h}x{w} is not mod-cropped to x{scale}; prepare each '
                             f'scale under its own root, or pass overwrite=True to rebuild this set')


def prepare_eval_set(hr_folder: PathLike, set_dir: PathLike, scale: int = 4, lr_folder: Optional[PathLike] = None,
                     downsample: int = 1, paths: Optional[Sequence[Path]] = None, overwrite: bool = False,
                     partial: Optional[str] = None) -> Dict[str, Path]:
    """Build one test set's ``HR`` and ``LR_bicubic/X<scale>`` folders under ``set_dir``.

    Args:
        hr_folder: The source HR images (left untouched).
        lr_folder: Downloaded LR x``scale`` images to use instead of making them.
        downsample: Bicubic factor applied to the sources before mod-cropping (DIV8K -> Test2K/4K).
        paths: Only these source images (default: all images of ``hr_folder``).
        overwrite, partial: See :mod:`cadyq_plugin.data.outputs`; complete, up-to-date outputs are reused unless
            ``overwrite``, an output whose sources or options changed is refused unless ``partial='redo'``.

    Returns:
        ``{'hr': path, 'lr': path}``.
    """
    out = eval_set_paths(set_dir, scale)
    safety = dict(overwrite=overwrite, partial=partial, reuse=True)
    make_hr(hr_folder, out['hr'], scale, downsample, paths, **safety)
    _check_divisible(out['hr'], scale)
    if lr_folder is None:
        make_lr(out['hr'], out['lr'], scale, **safety)
    else:
        copy_given_lr(lr_folder, out['hr'], out['lr'], scale, **safety)
    return out


def prepare_benchmark(sets: Mapping[str, PathLike], root: PathLike = 'datasets', scale: int = 4,
                      lr_folders: Optional[Mapping[str, PathLike]] = None, overwrite: bool = False,
                      partial: Optional[str] = None) -> Dict[str, Dict[str, Path]]:
    """Prepare several benchmark sets: ``sets`` maps a set name (e.g. ``'Set5'``) to its source HR folder.

    Returns:
        ``{name: {'hr': path, 'lr': path}}`` under ``<root>/benchmark/<name>``.
    """
    lr_folders = dict(lr_folders or {})
    unknown = set(lr_folders) - set(sets)
    if unknown:
        raise InputError(f'LR folders given for sets without HR: {sorted(unknown)}')
    result = {}
    for name, hr_folder in sets.items():
        if not name or Path(name).name != name or name.startswith('.'):
            raise InputError(f'set name {name!r} must be a plain folder name such as Set5')
        result[name] = prepare_eval_set(hr_folder, Path(root) / 'benchmark' / name, scale, lr_folders.get(name),
                                        overwrite=overwrite, partial=partial)
    return result
