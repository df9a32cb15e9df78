"""Reading and writing the images of dataset preparation, with one documented normalisation.

Every image enters the pipeline as 8-bit, 3-channel BGR (OpenCV order, what BasicSR reads back):

- grayscale (1 channel) is replicated to 3 channels;
- an alpha channel (gray+alpha or BGRA) is dropped, the colour is kept as stored (no compositing);
- 16-bit samples are scaled to 8 bits with ``round(v * 255 / 65535)`` (so 0 -> 0 and 65535 -> 255);
- anything else (float images, unreadable or corrupt files) raises :class:`ImageReadError` naming the file.

Each conversion is logged once per file. Writes go to a temporary name first and are renamed into place, so a
file that exists under its final name is always complete (which is what ``resume`` relies on).
"""
import logging
import os
from pathlib import Path
from typing import List, Tuple, Union

import cv2
import numpy as np
from PIL import Image

from cadyq_plugin.errors import InputError, InputNotFoundError, UserError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.ppm', '.pgm', '.webp')
TMP_SUFFIX = '.tmp'
PathLike = Union[str, os.PathLike]

_logged = set()


class ImageReadError(UserError, ValueError):
    """An input image cannot be used; the message names the file and what was expected."""


def _note(path: Path, what: str) -> None:
    key = (str(path), what)
    if key not in _logged:
        _logged.add(key)
        logger.info('%s: %s', path, what)


def read_image(path: PathLike) -> np.ndarray:
    """Read an image as uint8 HxWx3 BGR, converting grayscale, alpha and 16-bit input (see module doc)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f'{path}: no such image file')
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ImageReadError(f'{path}: cannot decode the image (unreadable, corrupt or unsupported format); '
                             f'expected an 8- or 16-bit image such as PNG, JPEG or BMP')
    if img.dtype == np.uint16:
        img = np.floor(img.astype(np.float64) * (255 / 65535) + 0.5).astype(np.uint8)
        _note(path, 'converted 16-bit samples to 8-bit (round(v * 255 / 65535))')
    elif img.dtype != np.uint8:
        raise ImageReadError(f'{path}: unsupported sample type {img.dtype}; expected 8- or 16-bit integer samples')
    if img.ndim == 2:
        img = img[:, :, None]
    channels = img.shape[2]
    if channels in (2, 4):
        img = img[:, :, :channels - 1]
        _note(path, 'dropped the alpha channel')
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
        _note(path, 'replicated grayscale to 3 channels')
    if img.shape[2] != 3:
        raise ImageReadError(f'{path}: {channels} channels; expected grayscale, RGB or RGBA')
    return np.ascontiguousarray(img)


def image_size(path: PathLike) -> Tuple[int, int]:
    """``(height, width)`` from the file header only, to check large folders without decoding them."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception as err:  # PIL raises several types for bad files
        raise ImageReadError(f'{path}: cannot read the image header ({err}); expected an image file') from err
    return height, width


def write_png(path: PathLike, img: np.ndarray, compress_level: int = 3) -> None:
    """Write ``img`` (uint8 HxWxC BGR) as PNG atomically: a crash never leaves a truncated file under ``path``."""
    path = Path(path)
    ok, buf = cv2.imencode('.png', img, [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
    if not ok:
        raise OSError(f'{path}: PNG encoding failed for an image of shape {img.shape}')
    tmp = path.with_name(path.name + TMP_SUFFIX)
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, path)


def list_images(folder: PathLike) -> List[Path]:
    """Image files directly inside ``folder``, sorted by name; an error if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputNotFoundError(f'{folder}: not a folder; expected a folder of images')
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise InputNotFoundError(f'{folder}: no images found; expected files ending in {", ".join(IMAGE_EXTENSIONS)}')
    stems = {}
    for p in paths:
        if p.stem in stems:
            raise InputError(f'{folder}: {stems[p.stem].name} and {p.name} have the same base name; '
                             f'outputs are named by base name, so keep one of them')
        stems[p.stem] = p
    return paths
