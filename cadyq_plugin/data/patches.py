"""Patch-wise inference: tile an LR image into overlapping patches and stitch the SR patches back (docs/method.md#patch-wise-inference).

CADyQ picks a bit-width per patch, so its patch-wise results depend on exactly how the image is tiled. This
module is the single definition of that tiling, used by validation, testing and the benchmark scripts:

- Along each axis, patches start at ``0, S, 2S, ...`` up to ``max(size - P, 0)``; every patch is ``P`` long
  except the last one, which extends to the border (``P .. P+S-1`` long, or the whole axis when it is shorter
  than ``P``).
- Stitching keeps the centre of each SR patch, without blending. With ``s = (P - S) * scale // 2`` (the
  reference's ``int((P - S) / 2 * scale)``), the first patch of a row/column keeps ``[0, s + S*scale)``,
  interior patch ``i`` keeps ``[s, s + S*scale)`` placed at ``i*S*scale + s`` and the last keeps ``[s, end)``.
- Each SR patch is rounded to the 0..255 grid before stitching (the reference quantizes every patch output).

Pure PyTorch, no BasicSR import. Boxes are ``(y0, y1, x0, x1)`` half-open LR coordinates.
"""
import numbers
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch

from cadyq_plugin.errors import InputError

Box = Tuple[int, int, int, int]


def _check_tiling(patch: int, step: int) -> None:
    if not (isinstance(patch, numbers.Integral) and isinstance(step, numbers.Integral)) or patch < 1 or step < 1:
        raise InputError(f'patch and step must be positive integers, got patch={patch!r}, step={step!r}')
    if step > patch:
        raise InputError(f'step ({step}) must not exceed patch ({patch}): the centre crops would leave gaps')


def patch_starts(size: int, patch: int, step: int) -> List[int]:
    """Start offsets of the patches along one axis of length ``size``.

    Example (P=96, S=90): size 96 -> [0]; 185 -> [0]; 186 -> [0, 90]; 500 -> [0, 90, 180, 270, 360].
    """
    _check_tiling(patch, step)
    if size < 1:
        raise ValueError(f'size must be positive, got {size}')
    return list(range(0, max(size - patch, 0) + 1, step))


def patch_spans(size: int, patch: int, step: int) -> List[Tuple[int, int]]:
    """Half-open ``[start, end)`` of every patch along one axis; the last one extends to ``size``."""
    starts = patch_starts(size, patch, step)
    return [(start, size if i == len(starts) - 1 else start + patch) for i, start in enumerate(starts)]


def patch_boxes(height: int, width: int, patch: int, step: int) -> List[Box]:
    """All patch boxes ``(y0, y1, x0, x1)`` of an ``height x width`` image in row-major order."""
    rows, cols = patch_spans(height, patch, step), patch_spans(width, patch, step)
    return [(y0, y1, x0, x1) for y0, y1 in rows for x0, x1 in cols]


def _check_lq(lq: torch.Tensor) -> None:
    if lq.dim() != 4 or lq.shape[0] != 1:
        raise ValueError(f'expected one LR image of shape [1, C, H, W], got {tuple(lq.shape)}')


def iter_patches(lq: torch.Tensor, patch: int, step: int) -> Iterator[Tuple[int, Box, torch.Tensor]]:
    """Yield ``(index, box, view)`` for every patch of ``lq`` [1, C, H, W], row-major; views share memory."""
    _check_lq(lq)
    for index, (y0, y1, x0, x1) in enumerate(patch_boxes(lq.shape[2], lq.shape[3], patch, step)):
        yield index, (y0, y1, x0, x1), lq[:, :, y0:y1, x0:x1]


def iter_patch_batches(lq: torch.Tensor, patch: int, step: int,
                       batch: int) -> Iterator[Tuple[List[int], List[Box], torch.Tensor]]:
    """Group patches of identical size into stacked batches of at most ``batch``.

    Yields ``(indices, boxes, tensor [n, C, h, w])``. Interior patches, last-column, last-row and the corner
    patch have different sizes, so each size fills its own batch; a batch is yielded as soon as it is full,
    the rest at the end. Because every patch keeps its index, the stitched result does not depend on
    ``batch`` (for a network that treats the samples of a batch independently, i.e. in eval mode). Only
    views of ``lq`` are held until a batch is stacked.
    """
    if not isinstance(batch, numbers.Integral) or batch < 1:
        raise InputError(f'batch must be a positive integer, got {batch!r}')
    pending: Dict[Tuple[int, int], List[Tuple[int, Box, torch.Tensor]]] = {}
    for index, box, view in iter_patches(lq, patch, step):
        group = pending.setdefault(tuple(view.shape[2:]), [])
        group.append((index, box, view))
        if len(group) == batch:
            yield _stack(group)
            group.clear()
    for group in pending.values():
        if group:
            yield _stack(group)


def _stack(group: Sequence[Tuple[int, Box, torch.Tensor]]) -> Tuple[List[int], List[Box], torch.Tensor]:
    return [g[0] for g in group], [g[1] for g in group], torch.cat([g[2] for g in group], dim=0)


def round_to_uint8_grid(img: torch.Tensor) -> torch.Tensor:
    """Clamp a [0, 1] image and round it to the 256 levels of an 8-bit image, as the reference does per patch."""
    return img.clamp(0, 1).mul(255).round().div(255)


def keep_region(span: Tuple[int, int], size: int, patch: int, step: int, scale: int) -> Tuple[int, int, int]:
    """Which part of one SR patch survives stitching along one axis.

    Args:
        span: The patch's LR ``[start, end)`` along this axis.
        size: The LR length of this axis.

    Returns:
        ``(src_start, src_end, dst_start)``: SR-patch rows/columns ``[src_start, src_end)`` go to the output
        starting at ``dst_start``.
    """
    start, end = span
    s = (patch - step) * scale // 2
    src_start = 0 if start == 0 else s
    src_end = (end - start) * scale if end == size else s + step * scale
    return src_start, src_end, start * scale + src_start


class PatchStitcher:
    """Assemble SR patches into the full SR image while holding only the output image.

    Args:
        lr_h, lr_w: LR image size that was tiled.
        patch, step: The tiling (LR pixels).
        scale: Upscaling factor of the network.
        channels: Channels of the SR image.
        round_to_uint8: Round every SR patch to the 0..255 grid (on a [0, 1] scale) before stitching, as the reference
            does (docs/method.md#patch-wise-inference). Disable it to stitch raw network outputs.
        device, dtype: Of the preallocated output.
    """

    def __init__(self, lr_h: int, lr_w: int, patch: int, step: int, scale: int, channels: int = 3,
                 round_to_uint8: bool = True, device: Union[str, torch.device] = 'cpu',
                 dtype: torch.dtype = torch.float32):
        if scale < 1 or channels < 1:
            raise ValueError(f'scale and channels must be positive, got scale={scale}, channels={channels}')
        self.lr_h, self.lr_w, self.patch, self.step, self.scale = lr_h, lr_w, patch, step, scale
        self.round_to_uint8 = round_to_uint8
        self.boxes = patch_boxes(lr_h, lr_w, patch, step)
        self._index_of = {box: i for i, box in enumerate(self.boxes)}
        self._done = [False] * len(self.boxes)
        self._out = torch.zeros(1, channels, lr_h * scale, lr_w * scale, device=device, dtype=dtype)

    @property
    def num_patches(self) -> int:
        return len(self.boxes)

    @property
    def complete(self) -> bool:
        return all(self._done)

    def regions(self, index: int) -> Tuple[Tuple[slice, slice], Tuple[slice, slice]]:
        """``((src_rows, src_cols), (dst_rows, dst_cols))`` slices of patch ``index``: SR patch -> output."""
        y0, y1, x0, x1 = self.boxes[index]
        ys0, ys1, yd = keep_region((y0, y1), self.lr_h, self.patch, self.step, self.scale)
        xs0, xs1, xd = keep_region((x0, x1), self.lr_w, self.patch, self.step, self.scale)
        return (slice(ys0, ys1), slice(xs0, xs1)), (slice(yd, yd + ys1 - ys0), slice(xd, xd + xs1 - xs0))

    def kept_boxes(self) -> List[Box]:
        """The HR box ``(y0, y1, x0, x1)`` of the output that each patch fills, in patch order."""
        boxes = []
        for index in range(self.num_patches):
            _, (rows, cols) = self.regions(index)
            boxes.append((rows.start, rows.stop, cols.start, cols.stop))
        return boxes

    def add(self, index_or_box: Union[int, Box], sr_patch: torch.Tensor) -> None:
        """Place the kept centre of one SR patch ([C, h, w] or [1, C, h, w]) into the output."""
        index = self._resolve(index_or_box)
        if sr_patch.dim() == 4 and sr_patch.shape[0] == 1:
            sr_patch = sr_patch[0]
        y0, y1, x0, x1 = self.boxes[index]
        expected = (self._out.shape[1], (y1 - y0) * self.scale, (x1 - x0) * self.scale)
        if tuple(sr_patch.shape) != expected:
            raise ValueError(f'SR patch {index} (LR box {self.boxes[index]}) has shape {tuple(sr_patch.shape)}, '
                             f'expected {expected} (LR patch size times scale {self.scale})')
        if self._done[index]:
            raise ValueError(f'SR patch {index} (LR box {self.boxes[index]}) was added twice')
        (src_y, src_x), (dst_y, dst_x) = self.regions(index)
        kept = sr_patch[:, src_y, src_x]
        if self.round_to_uint8:
            kept = round_to_uint8_grid(kept)
        self._out[0, :, dst_y, dst_x] = kept.to(self._out)
        self._done[index] = True

    def add_batch(self, indices: Sequence[int], sr_batch: torch.Tensor) -> None:
        """Add the SR outputs of one batch from :func:`iter_patch_batches`."""
        if sr_batch.shape[0] != len(indices):
            raise ValueError(f'got {sr_batch.shape[0]} SR patches for {len(indices)} indices')
        for index, sr_patch in zip(indices, sr_batch):
            self.add(index, sr_patch)

    def result(self) -> torch.Tensor:
        """The stitched SR image [1, C, H*scale, W*scale]; every patch must have been added."""
        missing = [i for i, done in enumerate(self._done) if not done]
        if missing:
            raise RuntimeError(f'{len(missing)} of {len(self.boxes)} patches were never added (first: {missing[0]})')
        return self._out

    def _resolve(self, index_or_box: Union[int, Box]) -> int:
        if isinstance(index_or_box, numbers.Integral):
            if not 0 <= index_or_box < len(self.boxes):
                raise IndexError(f'patch index {index_or_box} out of range 0..{len(self.boxes) - 1}')
            return index_or_box
        box = tuple(int(v) for v in index_or_box)
        if box not in self._index_of:
            raise ValueError(f'{box} is not a patch box of this tiling (image {self.lr_h}x{self.lr_w}, '
                             f'patch {self.patch}, step {self.step})')
        return self._index_of[box]


class Stitched(NamedTuple):
    """What :func:`forward_patchwise` returns: the stitched SR image, one ``extras`` entry per patch (what the
    forward returned for it, in patch order) and the HR box ``(y0, y1, x0, x1)`` each patch contributes."""
    image: torch.Tensor
    extras: List[Any]
    regions: List[Box]


def forward_patchwise(forward: Callable[[torch.Tensor], Tuple[torch.Tensor, Optional[Sequence[Any]]]],
                      lq: torch.Tensor, patch: int, step: int, scale: int, batch: int = 1,
                      round_to_uint8: bool = True) -> Stitched:
    """Run ``forward`` patch by patch over ``lq`` [1, C, H, W] and stitch the SR image: the one tiling loop of
    validation, testing, ``basicsr infer`` and the benchmark.

    ``forward`` maps an LR batch [n, C, h, w] to ``(sr_batch [n, C', h*scale, w*scale], per_sample)``, where
    ``per_sample`` holds one entry per patch of the batch (e.g. its chosen bits) or is ``None``. Memory: the
    output image plus one batch.
    """
    _check_lq(lq)
    stitcher, extras = None, None
    for indices, _, lr_batch in iter_patch_batches(lq, patch, step, batch):
        sr_batch, per_sample = forward(lr_batch)
        if stitcher is None:
            stitcher = PatchStitcher(lq.shape[2], lq.shape[3], patch, step, scale, sr_batch.shape[1],
                                     round_to_uint8=round_to_uint8, device=sr_batch.device, dtype=sr_batch.dtype)
            extras = [None] * stitcher.num_patches
        stitcher.add_batch(indices, sr_batch)
        if per_sample is not None:
            for index, extra in zip(indices, per_sample):
                extras[index] = extra
    return Stitched(stitcher.result(), extras, stitcher.kept_boxes())
