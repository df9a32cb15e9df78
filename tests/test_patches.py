"""Patch tiling and stitching (docs/method.md#patch-wise-inference) checked against hand-worked examples and independent models."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import cadyq_plugin  # noqa: F401  (compat shim before anything imports basicsr)
from cadyq_plugin.data.patches import (PatchStitcher, forward_patchwise, iter_patch_batches, iter_patches, keep_region,
                                       patch_boxes, patch_spans, patch_starts, round_to_uint8_grid)

# (H, W, P, S, scale): smaller than P, equal to P, P+S-1, P+S, odd sizes, odd P-S, S == P, reference P/S.
CASES = [
    (20, 20, 24, 18, 2),
    (24, 24, 24, 18, 2),
    (41, 41, 24, 18, 2),
    (42, 23, 24, 18, 2),
    (37, 53, 16, 10, 3),
    (45, 47, 15, 10, 3),
    (50, 31, 12, 12, 4),
    (33, 70, 96, 90, 4),
    (190, 187, 96, 90, 1),
]


def _image(h, w, c=3, seed=0):
    """Random image on the 8-bit grid, so rounding each patch is exact."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, c, h, w), generator=gen).float() / 255


def _nearest(x, scale):
    return F.interpolate(x, scale_factor=scale, mode='nearest')


@pytest.mark.parametrize('size, expected', [(50, [0]), (96, [0]), (185, [0]), (186, [0, 90]), (275, [0, 90]),
                                            (276, [0, 90, 180]), (500, [0, 90, 180, 270, 360])])
def test_patch_starts_reference_tiling(size, expected):
    assert patch_starts(size, 96, 90) == expected


def test_patch_spans_last_extends_to_border():
    assert patch_spans(50, 96, 90) == [(0, 50)]
    assert patch_spans(185, 96, 90) == [(0, 185)]
    assert patch_spans(186, 96, 90) == [(0, 96), (90, 186)]
    assert patch_spans(500, 96, 90) == [(0, 96), (90, 186), (180, 276), (270, 366), (360, 500)]


@pytest.mark.parametrize('patch, step', [(96, 90), (24, 18), (15, 10), (12, 12), (7, 1)])
def test_last_patch_length_in_documented_range(patch, step):
    for size in range(1, 3 * patch + 2 * step):
        spans = patch_spans(size, patch, step)
        assert spans[0][0] == 0 and spans[-1][1] == size
        assert all(end - start == patch for start, end in spans[:-1])
        last = spans[-1][1] - spans[-1][0]
        assert (last == size) if size < patch else (patch <= last <= patch + step - 1)


def test_keep_region_worked_example():
    # width 200, P=96, S=90, x4: s = 12; first keeps [0, 372) at 0, last (LR 90..200) keeps [12, 440) at 372.
    assert keep_region((0, 96), 200, 96, 90, 4) == (0, 372, 0)
    assert keep_region((90, 200), 200, 96, 90, 4) == (12, 440, 372)
    # width 500: interior patch 2 (LR 180..276) keeps [12, 372) placed at 2*360 + 12.
    assert keep_region((180, 276), 500, 96, 90, 4) == (12, 372, 732)
    # P-S odd: s = int(2.5 * 3) = 7, as the reference computes it.
    assert keep_region((10, 25), 47, 15, 10, 3) == (7, 37, 37)


@pytest.mark.parametrize('h, w, patch, step, scale', CASES)
def test_identity_network_reproduces_full_image(h, w, patch, step, scale):
    lq = _image(h, w)
    sr = forward_patchwise(lambda x: (_nearest(x, scale), None), lq, patch, step, scale, batch=3).image
    assert sr.shape == (1, 3, h * scale, w * scale)
    assert torch.equal(sr, _nearest(lq, scale))


@pytest.mark.parametrize('h, w, patch, step, scale', [c for c in CASES if c[2] > c[3]])
def test_only_patch_centres_survive(h, w, patch, step, scale):
    """A network that spoils the outer frame of every SR patch: only the image's own frame may show it."""

    def frame_marking(x):
        out = _nearest(x, scale).clone()
        out[:, :, [0, -1], :] = 2.0
        out[:, :, :, [0, -1]] = 2.0
        return out

    sr = forward_patchwise(lambda x: (frame_marking(x), None), _image(h, w), patch, step, scale,
                           round_to_uint8=False).image
    inner = sr[:, :, 1:-1, 1:-1]
    assert (inner <= 1).all()
    assert (sr[:, :, 0, :] == 2).all() and (sr[:, :, -1, :] == 2).all()


@pytest.mark.parametrize('h, w, patch, step, scale', CASES)
def test_every_hr_pixel_written_exactly_once(h, w, patch, step, scale):
    stitcher = PatchStitcher(h, w, patch, step, scale)
    count = torch.zeros(h * scale, w * scale, dtype=torch.int32)
    for index in range(stitcher.num_patches):
        (src_y, src_x), (dst_y, dst_x) = stitcher.regions(index)
        assert src_y.stop - src_y.start == dst_y.stop - dst_y.start > 0
        assert src_x.stop - src_x.start == dst_x.stop - dst_x.start > 0
        count[dst_y, dst_x] += 1
    assert (count == 1).all()


@pytest.mark.parametrize('h, w, patch, step, scale', CASES)
def test_each_hr_pixel_comes_from_the_patch_owning_it(h, w, patch, step, scale):
    """Owner along an axis, from the rule of docs/method.md#patch-wise-inference: clamp(floor((y - s) / (S*scale)), 0, n - 1)."""
    rows, cols = len(patch_starts(h, patch, step)), len(patch_starts(w, patch, step))
    stitcher = PatchStitcher(h, w, patch, step, scale, channels=1, round_to_uint8=False)
    for index, (y0, y1, x0, x1) in enumerate(stitcher.boxes):
        stitcher.add(index, torch.full((1, (y1 - y0) * scale, (x1 - x0) * scale), float(index)))
    s = (patch - step) * scale // 2

    def owner(coord, n):
        return torch.clamp(torch.div(coord - s, step * scale, rounding_mode='floor'), 0, n - 1)

    expected = owner(torch.arange(h * scale), rows)[:, None] * cols + owner(torch.arange(w * scale), cols)[None, :]
    assert torch.equal(stitcher.result()[0, 0].long(), expected)


def _content_dependent(scale):
    """A fake network whose output for a patch depends on the whole patch, but not on the rest of the batch."""

    def forward(x):
        gain = 1 + x.mean(dim=(1, 2, 3), keepdim=True) + 0.1 * x[:, :1, :1, :1]
        return _nearest(x, scale) * gain - 0.2

    return forward


@pytest.mark.parametrize('h, w, patch, step, scale', [(37, 53, 16, 10, 3), (41, 41, 24, 18, 2), (20, 20, 24, 18, 2)])
def test_result_independent_of_batch_size(h, w, patch, step, scale):
    lq = _image(h, w, seed=1)
    forward = _content_dependent(scale)
    results = [forward_patchwise(lambda x: (forward(x), None), lq, patch, step, scale, batch=b).image
               for b in (1, 2, 3, 7, 64)]
    for other in results[1:]:
        assert torch.equal(results[0], other)
    # And equal to stitching patch by patch by hand, patch index by patch index.
    stitcher = PatchStitcher(h, w, patch, step, scale)
    for index, box, view in iter_patches(lq, patch, step):
        stitcher.add(box, _content_dependent(scale)(view))
    assert torch.equal(results[0], stitcher.result())


def test_batches_group_same_size_patches_and_keep_identity():
    lq = _image(37, 53)
    boxes = patch_boxes(37, 53, 16, 10)
    seen = []
    for indices, batch_boxes, tensor in iter_patch_batches(lq, 16, 10, batch=4):
        assert 1 <= len(indices) <= 4 and tensor.shape[0] == len(indices)
        for i, index in enumerate(indices):
            y0, y1, x0, x1 = boxes[index]
            assert batch_boxes[i] == boxes[index]
            assert torch.equal(tensor[i], lq[0, :, y0:y1, x0:x1])
        seen.extend(indices)
    assert sorted(seen) == list(range(len(boxes)))


def test_iter_patches_row_major():
    boxes = [box for _, box, _ in iter_patches(_image(30, 40), 16, 10)]
    assert boxes == [(0, 16, 0, 16), (0, 16, 10, 26), (0, 16, 20, 40), (10, 30, 0, 16), (10, 30, 10, 26),
                     (10, 30, 20, 40)]


def test_round_to_uint8_grid():
    x = torch.tensor([-0.3, 0.0, 0.4 / 255, 0.6 / 255, 100.4 / 255, 1.0, 1.7])
    expected = torch.tensor([0.0, 0.0, 0.0, 1.0, 100.0, 255.0, 255.0]) / 255
    assert torch.allclose(round_to_uint8_grid(x), expected, atol=0, rtol=0)


def test_patches_are_rounded_before_stitching_only_when_asked():
    lq = _image(20, 20)
    noisy = lambda x: _nearest(x, 2) + 0.3 / 255  # noqa: E731
    assert torch.equal(forward_patchwise(lambda x: (noisy(x), None), lq, 8, 6, 2).image, _nearest(lq, 2))
    assert torch.allclose(forward_patchwise(lambda x: (noisy(x), None), lq, 8, 6, 2, round_to_uint8=False).image,
                          _nearest(lq, 2) + 0.3 / 255)


@pytest.mark.parametrize('batch', [1, 4])
def test_per_patch_extras_and_regions_come_back_in_patch_order(batch):
    lq = _image(37, 53)
    boxes = patch_boxes(37, 53, 16, 10)

    def forward(x):  # each patch reports its own LR size and top-left pixel
        return _nearest(x, 3), [(tuple(p.shape[1:]), float(p[0, 0, 0])) for p in x]

    stitched = forward_patchwise(forward, lq, 16, 10, 3, batch=batch)
    assert stitched.extras == [((y1 - y0, x1 - x0), float(lq[0, 0, y0, x0])) for y0, y1, x0, x1 in boxes]
    stitcher = PatchStitcher(37, 53, 16, 10, 3)
    assert stitched.regions == [(r.start, r.stop, c.start, c.stop)
                                for r, c in (stitcher.regions(i)[1] for i in range(len(boxes)))]


def test_misuse_is_reported():
    with pytest.raises(ValueError, match='step'):
        patch_starts(100, 10, 11)
    with pytest.raises(ValueError, match=r'\[1, C, H, W\]'):
        next(iter_patches(torch.zeros(2, 3, 8, 8), 4, 4))
    stitcher = PatchStitcher(20, 20, 8, 6, 2)
    with pytest.raises(ValueError, match='expected'):
        stitcher.add(0, torch.zeros(3, 8, 8))
    stitcher.add(0, torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match='twice'):
        stitcher.add((0, 8, 0, 8), torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match='not a patch box'):
        stitcher.add((1, 9, 0, 8), torch.zeros(3, 16, 16))
    with pytest.raises(RuntimeError, match='never added'):
        stitcher.result()


def test_no_two_boxes_equal_and_all_inside():
    for h, w, patch, step in itertools.product([5, 17, 40], [9, 33], [8, 12], [4, 8]):
        boxes = patch_boxes(h, w, patch, step)
        assert len(set(boxes)) == len(boxes)
        assert all(0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w for y0, y1, x0, x1 in boxes)
