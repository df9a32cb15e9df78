"""Bit map: a colour overlay of the per-region FAB on the SR image (docs/method.md#fab-and-bitops, docs/method.md#patch-wise-inference).

In patch-wise inference every patch gets one FAB (the mean of its chosen bits over the dynamic selectors) and
contributes one region of the stitched SR image (``PatchStitcher.regions(i)``); these regions tile the image
without overlap. Image-wise inference is a single region covering the whole image.

:func:`render_bit_map` blends a fixed colormap colour over each region (low bits cool / blue, high bits warm /
red, OpenCV ``COLORMAP_JET`` over the candidate bit range), draws 1-pixel borders between regions, writes the
FAB in every region large enough to hold the text, and appends a legend strip (colour bar with the candidate
bits as ticks, plus the image's mean FAB) below the image. Pure OpenCV / NumPy; no matplotlib.
"""
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from cadyq_plugin.data.patches import keep_region, patch_spans

Box = Tuple[int, int, int, int]

COLORMAP = cv2.COLORMAP_JET
BORDER_BGR = (40, 40, 40)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def fab_to_level(fab: float, bit_range: Tuple[float, float] = (4, 8)) -> int:
    """Colormap index 0..255 of a FAB: linear over ``bit_range``, clipped outside it."""
    lo, hi = _check_range(bit_range)
    t = (float(fab) - lo) / (hi - lo)
    return int(round(min(max(t, 0.0), 1.0) * 255))


def fab_color(fab: float, bit_range: Tuple[float, float] = (4, 8)) -> Tuple[int, int, int]:
    """BGR colour of a FAB in the bit map's colormap."""
    return tuple(int(v) for v in _lut()[fab_to_level(fab, bit_range)])


def legend_height(width: int) -> int:
    """Height in pixels of the legend strip appended below an image of ``width`` pixels."""
    return int(min(max(round(width * 0.05), 40), 96))


def stitched_regions(lr_h: int, lr_w: int, patch: Optional[int], step: Optional[int], scale: int) -> List[Box]:
    """HR boxes ``(y0, y1, x0, x1)`` each patch keeps in the stitched image, in patch order (docs/method.md#patch-wise-inference).

    ``patch=None`` means image-wise inference: one region covering the whole SR image. Same as
    ``PatchStitcher(lr_h, lr_w, patch, step, scale).regions(i)[1]`` for every patch ``i``.
    """
    if patch is None:
        return [(0, lr_h * scale, 0, lr_w * scale)]
    rows = [keep_region(span, lr_h, patch, step, scale) for span in patch_spans(lr_h, patch, step)]
    cols = [keep_region(span, lr_w, patch, step, scale) for span in patch_spans(lr_w, patch, step)]
    return [(yd, yd + ys1 - ys0, xd, xd + xs1 - xs0) for ys0, ys1, yd in rows for xs0, xs1, xd in cols]


def render_bit_map(sr_bgr_uint8: np.ndarray, regions: Sequence[Box], fabs: Sequence[float],
                   bit_range: Tuple[float, float] = (4, 8), alpha: float = 0.45, borders: bool = True,
                   labels: bool = True, legend: bool = True) -> np.ndarray:
    """Overlay the per-region FAB on the SR image.

    Args:
        sr_bgr_uint8: SR image ``[H, W, 3]`` (or ``[H, W]``) uint8, BGR.
        regions: HR boxes ``(y0, y1, x0, x1)`` (half-open), one per FAB; they should tile the image without
            overlap (a later region overwrites an earlier one where they overlap). Pixels outside every region
            are left untouched.
        fabs: FAB of each region. Values outside ``bit_range`` get the end colours; the label shows the value.
        bit_range: ``(lowest, highest)`` candidate bit-width, the ends of the colormap.
        alpha: Opacity of the colour: ``out = (1 - alpha) * sr + alpha * colour``.
        borders: Draw 1-pixel lines between regions (on each region's top / left edge that is not the image's).
        labels: Write ``f'{fab:.2f}'`` centred in each region large enough to hold it.
        legend: Append the legend strip (height :func:`legend_height`, same width) below the image.

    Returns:
        BGR uint8 image ``[H + legend_height(W), W, 3]`` (``[H, W, 3]`` without the legend).
    """
    img = _check_image(sr_bgr_uint8)
    lo, hi = _check_range(bit_range)
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f'alpha must be in [0, 1], got {alpha}')
    regions = [tuple(int(v) for v in box) for box in regions]
    fabs = [float(f) for f in fabs]
    if len(regions) != len(fabs):
        raise ValueError(f'got {len(regions)} regions but {len(fabs)} FABs')
    h, w = img.shape[:2]
    for box in regions:
        if len(box) != 4:
            raise ValueError(f'region {box} is not a (y0, y1, x0, x1) box')
        y0, y1, x0, x1 = box
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise ValueError(f'region {box} is empty or outside the {h}x{w} image')
    for fab in fabs:
        if not np.isfinite(fab):
            raise ValueError(f'FAB must be finite, got {fab}')

    # one colour canvas + coverage mask, blended in a single pass (fast for hundreds of regions)
    colour = np.zeros_like(img)
    covered = np.zeros((h, w), dtype=bool)
    lut = _lut()
    for (y0, y1, x0, x1), fab in zip(regions, fabs):
        colour[y0:y1, x0:x1] = lut[fab_to_level(fab, (lo, hi))]
        covered[y0:y1, x0:x1] = True
    out = img.copy()
    blended = img[covered].astype(np.float64) * (1.0 - alpha) + colour[covered].astype(np.float64) * alpha
    out[covered] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)

    if borders:
        for y0, y1, x0, x1 in regions:
            if y0 > 0:
                out[y0, x0:x1] = BORDER_BGR
            if x0 > 0:
                out[y0:y1, x0] = BORDER_BGR
    if labels:
        for box, fab in zip(regions, fabs):
            _label(out, box, f'{fab:.2f}')
    if legend:
        mean_fab = float(np.mean(fabs)) if fabs else None
        out = np.concatenate([out, _legend(w, (lo, hi), mean_fab)], axis=0)
    return out


def bit_map_path(sr_path: Union[str, os.PathLike]) -> Union[str, Path]:
    """Sibling path ``<stem>_bitmap.png`` of an SR image (``str`` in, ``str`` out; ``Path`` otherwise)."""
    path = Path(sr_path)
    result = path.with_name(f'{path.stem}_bitmap.png')
    return str(result) if isinstance(sr_path, str) else result


def save_bit_map(sr_path: Union[str, os.PathLike], sr_bgr_uint8: np.ndarray, regions: Sequence[Box],
                 fabs: Sequence[float], **kwargs) -> Union[str, Path]:
    """Render the bit map and write it atomically to :func:`bit_map_path` ``(sr_path)``; returns that path."""
    target = bit_map_path(sr_path)
    ok, buf = cv2.imencode('.png', render_bit_map(sr_bgr_uint8, regions, fabs, **kwargs))
    if not ok:
        raise OSError(f'could not encode the bit map for {target}')
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    tmp = f'{target}.tmp{os.getpid()}'
    try:
        with open(tmp, 'wb') as f:
            f.write(buf.tobytes())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


# ----------------------------------------------------------------------------------------------------------

_LUT = None


def _lut() -> np.ndarray:
    """``[256, 3]`` BGR colours of the colormap."""
    global _LUT
    if _LUT is None:
        _LUT = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), COLORMAP).reshape(256, 3)
    return _LUT


def _check_range(bit_range) -> Tuple[float, float]:
    lo, hi = (float(v) for v in bit_range)
    if not hi > lo:
        raise ValueError(f'bit_range must be (low, high) with high > low, got {bit_range}')
    return lo, hi


def _check_image(img) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f'expected a uint8 image, got {img.dtype}')
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.ndim == 3 and img.shape[2] == 1:
        img = cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2BGR)
    elif img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f'expected an [H, W, 3] BGR image, got shape {img.shape}')
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f'empty image of shape {img.shape}')
    return np.ascontiguousarray(img)


def _fit_text(text, max_w, max_h, max_scale) -> Optional[Tuple[float, int, Tuple[int, int], int]]:
    """Largest font scale (<= max_scale, >= 0.35) whose (outlined) text fits ``max_w x max_h``."""
    scale = max_scale
    while scale >= 0.35 - 1e-9:
        thickness = max(1, int(round(scale * 1.5)))
        (tw, th), base = cv2.getTextSize(text, _FONT, scale, thickness + 2)
        if tw + 2 <= max_w and th + base + 2 <= max_h:
            return scale, thickness, (tw, th), base
        scale = round(scale - 0.1, 2)
    return None


def _label(img, box, text):
    """Centre ``text`` in ``box`` if it fits: white or black for contrast, outlined when large enough."""
    y0, y1, x0, x1 = box
    rw, rh = x1 - x0, y1 - y0
    fit = _fit_text(text, rw - 4, rh - 4, max_scale=min(1.2, max(0.35, rw / 160)))
    if fit is None:
        return
    scale, thickness, (tw, th), base = fit
    org = (x0 + (rw - tw) // 2, y0 + (rh + th - base) // 2)
    b, g, r = img[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)
    dark_bg = 0.114 * b + 0.587 * g + 0.299 * r < 150
    fg, bg = ((255, 255, 255), (0, 0, 0)) if dark_bg else ((0, 0, 0), (255, 255, 255))
    if scale >= 0.6:
        cv2.putText(img, text, org, _FONT, scale, bg, thickness + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, _FONT, scale, fg, thickness, cv2.LINE_AA)


def _legend(width: int, bit_range: Tuple[float, float], mean_fab: Optional[float]) -> np.ndarray:
    """White strip: ``[caption] [colour bar over the bit range, integer bits as ticks + labels below]``."""
    lo, hi = bit_range
    lh = legend_height(width)
    strip = np.full((lh, width, 3), 255, dtype=np.uint8)
    margin = max(2, width // 50)
    bar_y0, bar_y1 = max(2, lh // 8), max(4, lh * 9 // 20)
    label_h = lh - bar_y1 - 5  # room for the tick labels below the bar

    # caption left of the bar, only when the image is wide enough for it
    bar_x0 = margin
    captions = ['FAB'] if mean_fab is None else [f'FAB  mean {mean_fab:.2f}', 'FAB']
    for caption in captions:
        fit = _fit_text(caption, width // 3, bar_y1 - bar_y0 + 6, max_scale=max(0.35, lh / 90))
        if fit is not None:
            break
    if fit is not None:
        scale, thickness, (tw, th), base = fit
        cv2.putText(strip, caption, (margin, (bar_y0 + bar_y1 + th) // 2), _FONT, scale, (0, 0, 0), thickness,
                    cv2.LINE_AA)
        bar_x0 = 2 * margin + tw
    bar_x0 = min(bar_x0, max(0, width - 2))
    bar_x1 = min(width, max(bar_x0 + 2, width - margin))

    levels = np.rint(np.linspace(0, 255, bar_x1 - bar_x0)).astype(np.intp)
    strip[bar_y0:bar_y1, bar_x0:bar_x1] = _lut()[levels][None]
    cv2.rectangle(strip, (bar_x0, bar_y0), (bar_x1 - 1, bar_y1 - 1), BORDER_BGR, 1)

    ticks = [float(b) for b in range(int(np.ceil(lo)), int(np.floor(hi)) + 1)]
    if len(ticks) < 2:
        ticks = [lo, hi]
    last_right = -10
    for bit in ticks:
        x = bar_x0 + int(round((bit - lo) / (hi - lo) * (bar_x1 - 1 - bar_x0)))
        cv2.line(strip, (x, bar_y1 - 1), (x, min(lh - 1, bar_y1 + 2)), (0, 0, 0), 1)
        text = f'{bit:g}'
        fit = _fit_text(text, width, label_h, max_scale=max(0.35, lh / 90))
        if fit is None:
            continue
        scale, thickness, (tw, th), base = fit
        tx = min(max(0, x - tw // 2), width - tw)
        if tx <= last_right + 3:  # would overlap the previous tick label
            continue
        cv2.putText(strip, text, (tx, bar_y1 + 3 + th), _FONT, scale, (0, 0, 0), thickness, cv2.LINE_AA)
        last_right = tx + tw
    return strip
