"""Crop large training images into overlapping sub-images, as BasicSR's DIV2K recipe does.

Reading 2K images and cropping a 192-pixel patch from each at every iteration wastes most of the decoding, so
training reads pre-cut sub-images instead (DIV2K x4: HR 480 step 240, LR 120 step 60, threshold 0). The
positions along an axis are ``0, step, 2*step, ...`` while a full crop fits, plus a last crop flush with the
border when more than ``thresh_size`` pixels would otherwise be lost. For an HR image whose sides are
multiples of the scale, cropping LR with every size divided by the scale gives the same positions divided by
the scale, so ``<base>_s001.png`` of HR and LR form a pair.
"""
from pathlib import Path
from typing import List, Optional, Sequence

from tqdm import tqdm

from cadyq_plugin.data.image_io import PathLike, list_images, read_image, write_png
from cadyq_plugin.data.manifest import make_manifest
from cadyq_plugin.data.outputs import build_output
from cadyq_plugin.data.transforms import mod_crop
from cadyq_plugin.errors import InputError


def crop_positions(size: int, crop_size: int, step: int, thresh_size: int = 0) -> List[int]:
    """Start offsets of the crops along one axis; an axis shorter than ``crop_size`` gives one crop at 0."""
    if crop_size < 1 or step < 1 or thresh_size < 0:
        raise InputError(f'need crop_size >= 1, step >= 1, thresh_size >= 0; got {crop_size}, {step}, {thresh_size}')
    if size <= crop_size:
        return [0]
    positions = list(range(0, size - crop_size + 1, step))
    if size - (positions[-1] + crop_size) > thresh_size:
        positions.append(size - crop_size)
    return positions


def subimage_base(stem: str, strip_suffix: Optional[str]) -> str:
    """Base name shared by HR and LR sub-images: DIV2K's ``0001x4`` loses its ``x4`` to pair with ``0001``."""
    if strip_suffix and stem.endswith(strip_suffix) and len(stem) > len(strip_suffix):
        return stem[:-len(strip_suffix)]
    return stem


def extract_subimages(input_folder: PathLike, save_folder: PathLike, crop_size: int, step: int,
                      thresh_size: int = 0, mod: int = 1, strip_suffix: Optional[str] = None,
                      paths: Optional[Sequence[Path]] = None, compress_level: int = 3, **safety) -> Path:
    """Cut every image of ``input_folder`` into sub-images ``<base>_s001.png, <base>_s002.png, ...`` (row-major).

    Args:
        mod: Mod-crop each image to this multiple first (HR: the scale, or the lcm of all scales prepared).
        strip_suffix: Remove this suffix from base names (``'x4'`` for DIV2K LR ``0001x4.png``).
        paths: Only these images of ``input_folder`` (default: all of them).
        **safety: ``overwrite`` / ``partial`` / ``reuse``, see :mod:`cadyq_plugin.data.outputs`.
    """
    paths = list_images(input_folder) if paths is None else list(paths)
    bases = {}
    for path in paths:
        base = subimage_base(path.stem, strip_suffix)
        if base in bases:
            raise InputError(f'{path} and {bases[base]} would both give sub-images named {base}_s*.png')
        bases[base] = path

    def write(staging):
        for base, path in tqdm(bases.items(), desc=f'sub-images {Path(save_folder).name}', unit='img'):
            img = mod_crop(read_image(path), mod)
            h_pos = crop_positions(img.shape[0], crop_size, step, thresh_size)
            w_pos = crop_positions(img.shape[1], crop_size, step, thresh_size)
            for index, (y, x) in enumerate(((y, x) for y in h_pos for x in w_pos), start=1):
                target = staging / f'{base}_s{index:03d}.png'
                if not target.exists():  # present only when resuming, and then complete (atomic writes)
                    write_png(target, img[y:y + crop_size, x:x + crop_size], compress_level)

    manifest = make_manifest({'input': paths}, kind='sub-images', crop_size=crop_size, step=step,
                             thresh_size=thresh_size, mod=mod, strip_suffix=strip_suffix, compress_level=compress_level)
    return build_output(save_folder, manifest, write, **safety)
