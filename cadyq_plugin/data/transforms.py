"""The two image operations that define SR pairs (docs/method.md#data-sets): mod-crop and MATLAB-style bicubic downsampling."""
import numpy as np

import cadyq_plugin  # noqa: F401  (compat shim before basicsr)
from basicsr.utils.matlab_functions import imresize

from cadyq_plugin.errors import InputError


def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom/right so both sides are multiples of ``scale`` (keeps the top-left, like BasicSR/MATLAB)."""
    if scale < 1:
        raise InputError(f'scale must be a positive integer, got {scale}')
    h, w = img.shape[:2]
    if h < scale or w < scale:
        raise InputError(f'image of size {h}x{w} is smaller than the scale {scale}')
    return img[:h - h % scale, :w - w % scale, ...]


def bicubic_downsample(img: np.ndarray, factor: int) -> np.ndarray:
    """Downsample a uint8 HxWxC image by an integer ``factor`` with MATLAB's ``imresize(img, 1/factor)``.

    BasicSR's ``imresize`` (antialiased bicubic) on [0, 1] floats, then MATLAB's uint8 conversion (clip,
    round half up). Sides must be multiples of ``factor`` (mod-crop first), so LR is exactly HR / factor.
    """
    if img.dtype != np.uint8:
        raise ValueError(f'expected a uint8 image, got {img.dtype}')
    h, w = img.shape[:2]
    if h % factor or w % factor:
        raise ValueError(f'image of size {h}x{w} is not divisible by {factor}; mod-crop it first')
    if factor == 1:
        return img.copy()
    out = imresize(img.astype(np.float32) / 255, 1 / factor)
    out = np.clip(np.floor(out.astype(np.float64) * 255 + 0.5), 0, 255).astype(np.uint8)
    if out.shape[:2] != (h // factor, w // factor):
        raise RuntimeError(f'imresize returned {out.shape[:2]} for {h}x{w} / {factor}')
    return out.reshape(h // factor, w // factor, *img.shape[2:])
