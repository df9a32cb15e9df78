"""TensorBoard visuals: the bit map as an image and the chosen bits as histograms.

``tb_logger`` is a ``torch.utils.tensorboard.SummaryWriter`` (what BasicSR's ``init_tb_logger`` returns) or
``None`` (no TensorBoard, e.g. non-zero ranks or ``use_tb_logger: false``), in which case both are no-ops.
"""
from typing import Sequence, Union

import numpy as np
import torch


def log_bit_map(tb_logger, tag: str, bgr_uint8: np.ndarray, step: int) -> None:
    """Log a BGR uint8 ``[H, W, 3]`` image (e.g. :func:`render_bit_map`'s) as ``tag`` (RGB, HWC)."""
    if tb_logger is None:
        return
    img = np.asarray(bgr_uint8)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f'expected a BGR uint8 [H, W, 3] image, got {img.dtype} {img.shape}')
    tb_logger.add_image(tag, np.ascontiguousarray(img[:, :, ::-1]), step, dataformats='HWC')


def log_bit_histograms(tb_logger, tag_prefix: str, bits: Union[torch.Tensor, np.ndarray, Sequence], step: int,
                       overall_tag: str = 'all') -> None:
    """Histograms of the chosen bits: ``<prefix>/layer_<idx:02d>`` per selector, plus ``<prefix>/<overall_tag>``.

    Args:
        bits: ``[n_forwards, n_selectors]`` chosen bit-widths (one row per image or patch forward, e.g. the
            rows of ``BitRecord.bits()`` stacked); a 1-D input is one forward. Nothing is logged when there
            are no forwards or no selectors (fp / pams networks). Non-finite entries are skipped. Bins are one
            per integer bit-width, shared by all layers.
    """
    if tb_logger is None:
        return
    values = bits.detach().cpu().double().numpy() if isinstance(bits, torch.Tensor) else np.asarray(bits, float)
    if values.ndim == 1:
        values = values[None, :]
    if values.ndim != 2:
        raise ValueError(f'bits must be [n_forwards, n_selectors], got shape {values.shape}')
    if values.size == 0:
        return
    edges = _bin_edges(values)
    for idx in range(values.shape[1]):
        column = values[:, idx]
        column = column[np.isfinite(column)]
        if column.size:
            tb_logger.add_histogram(f'{tag_prefix}/layer_{idx:02d}', column, step, bins=edges)
    tb_logger.add_histogram(f'{tag_prefix}/{overall_tag}', values[np.isfinite(values)], step, bins=edges)


def _bin_edges(values: np.ndarray) -> np.ndarray:
    """One bin per integer bit-width (edges at half-integers) across all layers, so histograms line up."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError('bits contain no finite values')
    lo, hi = np.floor(finite.min()), np.ceil(finite.max())
    return np.arange(lo - 0.5, hi + 1.0, 1.0)
