"""Reporting (cadyq_plugin.reporting): the FAB bit map overlay, the per-image results tables and the
TensorBoard image / histogram logging."""
import csv
import os

import cv2
import numpy as np
import pytest
import torch

import cadyq_plugin  # noqa: F401  (compat shim before anything imports basicsr)
from cadyq_plugin.data.patches import PatchStitcher
from cadyq_plugin.reporting import (bit_map_path, fab_to_level, legend_height, log_bit_histograms, log_bit_map,
                                    read_results_csv, render_bit_map, save_bit_map, stitched_regions,
                                    write_results_table)
from cadyq_plugin.reporting.bitmap import BORDER_BGR

ALPHA = 0.45


def _textured(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _jet(fab, lo=4.0, hi=8.0):
    """Independent reference: normalise the FAB and ask OpenCV for the JET colour (BGR, float)."""
    t = min(max((fab - lo) / (hi - lo), 0.0), 1.0)
    level = np.uint8(round(t * 255))
    return cv2.applyColorMap(np.full((1, 1), level, np.uint8), cv2.COLORMAP_JET)[0, 0].astype(np.float64)


def _expected_blend(sr, fab, alpha=ALPHA):
    return np.clip(np.rint(sr.astype(np.float64) * (1 - alpha) + _jet(fab) * alpha), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ bit map


def test_region_colour_follows_colormap_and_fab_direction():
    h, w = 60, 540
    sr = np.full((h, w, 3), 128, np.uint8)
    fabs = [4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0, 7.5, 8.0]
    regions = [(0, h, 60 * i, 60 * (i + 1)) for i in range(len(fabs))]
    out = render_bit_map(sr, regions, fabs, alpha=ALPHA, labels=False)
    means = []
    for (y0, y1, x0, x1), fab in zip(regions, fabs):
        inner = out[y0:y1, x0 + 1:x1]  # skip the 1-px border on the left edge
        np.testing.assert_array_equal(inner, np.broadcast_to(_expected_blend(sr[y0:y1, x0 + 1:x1], fab),
                                                              inner.shape))
        means.append(inner.reshape(-1, 3).mean(axis=0))
    b_low, _, r_low = means[0]
    b_high, _, r_high = means[-1]
    assert b_low > r_low and r_high > b_high  # low bits cool (blue), high bits warm (red)
    assert r_high > r_low and b_low > b_high
    # un-blend each region's colour and locate it on OpenCV's JET ramp: the position grows with the FAB
    jet = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_JET)[:, 0].astype(float)
    positions = []
    for mean in means:
        colour = (mean - 128 * (1 - ALPHA)) / ALPHA
        positions.append(int(np.argmin(((jet - colour) ** 2).sum(axis=1))))
    assert positions == sorted(positions) and len(set(positions)) == len(fabs)
    assert positions[0] == 0 and positions[-1] == 255
    assert [fab_to_level(f) for f in fabs] == sorted(fab_to_level(f) for f in fabs)


def test_out_of_range_fab_is_clipped_to_end_colours():
    sr = np.full((20, 40, 3), 100, np.uint8)
    out = render_bit_map(sr, [(0, 20, 0, 20), (0, 20, 20, 40)], [2.0, 11.0], labels=False, legend=False)
    np.testing.assert_array_equal(out[5, 5], _expected_blend(sr[5, 5], 4.0))
    np.testing.assert_array_equal(out[5, 30], _expected_blend(sr[5, 30], 8.0))


def test_size_is_sr_plus_legend_and_outside_pixels_untouched():
    h, w = 48, 80
    sr = _textured(h, w)
    regions = [(0, 24, 0, 40), (24, 48, 0, 40)]  # left half only
    out = render_bit_map(sr, regions, [5.0, 7.0])
    assert out.dtype == np.uint8 and out.shape == (h + legend_height(w), w, 3)
    assert render_bit_map(sr, regions, [5.0, 7.0], legend=False).shape == (h, w, 3)
    np.testing.assert_array_equal(out[:h, 40:], sr[:, 40:])  # outside every region: unchanged
    # inside: the blend only, apart from the border line between the two regions (no labels: too small)
    plain = render_bit_map(sr, regions, [5.0, 7.0], labels=False, legend=False)
    np.testing.assert_array_equal(plain[:24, :40], _expected_blend(sr[:24, :40], 5.0))
    np.testing.assert_array_equal(plain[25:, :40], _expected_blend(sr[25:, :40], 7.0))
    assert (plain[24, :40] == BORDER_BGR).all()
    np.testing.assert_array_equal(sr, _textured(h, w))  # input not modified
    legend = out[h:]
    assert legend.std() > 0 and (legend == 255).all(axis=2).mean() > 0.2  # a white strip with a colour bar


def test_single_region_image_wise():
    h, w = 256, 320
    sr = _textured(h, w, seed=1)
    out = render_bit_map(sr, [(0, h, 0, w)], [6.25])
    assert out.shape == (h + legend_height(w), w, 3)
    expected = _expected_blend(sr, 6.25)
    differs = (out[:h] != expected).any(axis=2)
    assert differs.any()  # the label was drawn ...
    ys, xs = np.nonzero(differs)
    assert ys.min() > h // 4 and ys.max() < 3 * h // 4 and xs.min() > w // 8 and xs.max() < 7 * w // 8  # ... centred
    no_label = render_bit_map(sr, [(0, h, 0, w)], [6.25], labels=False, legend=False)
    np.testing.assert_array_equal(no_label, expected)  # one region: no borders


def test_hundreds_of_patch_regions_match_stitcher():
    lr_h, lr_w, patch, step, scale = 100, 130, 12, 10, 2
    regions = stitched_regions(lr_h, lr_w, patch, step, scale)
    stitcher = PatchStitcher(lr_h, lr_w, patch, step, scale)
    assert len(regions) == stitcher.num_patches >= 100
    for i, box in enumerate(regions):
        _, (rows, cols) = stitcher.regions(i)
        assert box == (rows.start, rows.stop, cols.start, cols.stop)
    h, w = lr_h * scale, lr_w * scale
    cover = np.zeros((h, w), int)
    for y0, y1, x0, x1 in regions:
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all()  # the kept regions tile the SR image
    assert stitched_regions(lr_h, lr_w, None, None, scale) == [(0, h, 0, w)]

    sr = _textured(h, w, seed=2)
    fabs = np.random.default_rng(3).uniform(4, 8, len(regions))
    out = render_bit_map(sr, regions, fabs, labels=False)
    assert out.shape == (h + legend_height(w), w, 3)
    for (y0, y1, x0, x1), fab in zip(regions, fabs):
        np.testing.assert_array_equal(out[y1 - 1, x1 - 1], _expected_blend(sr[y1 - 1, x1 - 1], fab))
        if y0 > 0:
            assert tuple(out[y0, x1 - 1]) == BORDER_BGR
    render_bit_map(sr, regions, fabs)  # with labels: runs, small regions simply get none


def test_bad_inputs_raise():
    sr = _textured(10, 10)
    with pytest.raises(ValueError):
        render_bit_map(sr, [(0, 10, 0, 10)], [5.0, 6.0])
    with pytest.raises(ValueError):
        render_bit_map(sr, [(0, 11, 0, 10)], [5.0])
    with pytest.raises(ValueError):
        render_bit_map(sr.astype(np.float32), [(0, 10, 0, 10)], [5.0])
    with pytest.raises(ValueError):
        render_bit_map(sr, [(0, 10, 0, 10)], [5.0], bit_range=(8, 4))


def test_bit_map_path_and_save(tmp_path):
    assert bit_map_path('/res/Set5/baby_x4.png') == '/res/Set5/baby_x4_bitmap.png'
    sr_path = tmp_path / 'vis' / 'bird_CADyQ.png'
    assert bit_map_path(sr_path) == tmp_path / 'vis' / 'bird_CADyQ_bitmap.png'
    sr = _textured(32, 48)
    written = save_bit_map(str(sr_path), sr, [(0, 32, 0, 48)], [5.5])
    assert written == str(tmp_path / 'vis' / 'bird_CADyQ_bitmap.png')
    img = cv2.imread(written)
    assert img.shape == (32 + legend_height(48), 48, 3)
    assert os.listdir(tmp_path / 'vis') == ['bird_CADyQ_bitmap.png']


# --------------------------------------------------------------------------------------------- tables


ROWS = [
    {'name': 'baby', 'psnr': 32.123456, 'ssim': 0.912345, 'avg_bit': 5.5555, 'bitops': 49.4712},
    {'name': 'bird', 'psnr': 33.9876, 'ssim': 0.93219, 'avg_bit': 6.0, 'bitops': 52.001},
    {'name': 'odd, name', 'psnr': 28.5, 'ssim': 0.8004, 'avg_bit': 4.25, 'bitops': 40.3333},
]
KEYS = ['psnr', 'ssim', 'avg_bit', 'bitops']
DECIMALS = {'psnr': 2, 'ssim': 4, 'avg_bit': 2, 'bitops': 2}


def test_results_table_csv_and_md(tmp_path):
    csv_path, md_path = write_results_table(ROWS, str(tmp_path / 'out'), 'Set5', ['ssim', 'psnr', 'avg_bit',
                                                                                  'bitops'])
    assert csv_path == str(tmp_path / 'out' / 'Set5_results.csv')
    assert md_path == str(tmp_path / 'out' / 'Set5_results.md')
    assert sorted(os.listdir(tmp_path / 'out')) == ['Set5_results.csv', 'Set5_results.md']  # no tmp left

    with open(csv_path, newline='') as f:
        raw = list(csv.reader(f))
    assert raw[0] == ['image', 'PSNR (dB)', 'SSIM', 'FAB', 'BitOPs (G)']
    assert raw[1] == ['baby', '32.12', '0.9123', '5.56', '49.47']
    assert [r[0] for r in raw[1:]] == ['baby', 'bird', 'odd, name', 'mean']

    back = read_results_csv(csv_path)
    assert [r['name'] for r in back] == ['baby', 'bird', 'odd, name', 'mean']
    for key in KEYS:
        tol = 0.5 * 10 ** -DECIMALS[key] + 1e-9
        for row, ref in zip(back, ROWS):
            assert abs(row[key] - ref[key]) <= tol
        mean = float(np.mean([r[key] for r in ROWS]))
        assert abs(back[-1][key] - mean) <= tol
        assert back[-1][key] == round(mean, DECIMALS[key])

    lines = open(md_path).read().splitlines()
    table = [ln for ln in lines if ln.startswith('|')]
    cells = [[c.strip() for c in ln.strip('|').split('|')] for ln in table]
    assert cells[0] == ['image', 'PSNR (dB)', 'SSIM', 'FAB', 'BitOPs (G)']
    assert set(''.join(cells[1])) <= set(':-')  # the alignment row
    assert cells[2] == raw[1] and cells[-1] == raw[-1] and len(cells) == 2 + len(ROWS) + 1


def test_results_table_subset_of_metrics(tmp_path):
    rows = [{'name': 'a', 'psnr': 30.0, 'avg_bit': 4.0}, {'name': 'b', 'psnr': 31.0, 'avg_bit': 5.0}]
    csv_path, md_path = write_results_table(rows, str(tmp_path), 'Urban100', ['psnr', 'avg_bit', 'bitops'])
    with open(csv_path, newline='') as f:
        raw = list(csv.reader(f))
    assert raw[0] == ['image', 'PSNR (dB)', 'FAB']  # bitops requested but absent: no column
    assert raw[-1] == ['mean', '30.50', '4.50']
    assert read_results_csv(csv_path)[-1] == {'name': 'mean', 'psnr': 30.5, 'avg_bit': 4.5}
    # overwriting is fine and stays atomic
    write_results_table(rows[:1], str(tmp_path), 'Urban100', None)
    assert read_results_csv(csv_path) == [{'name': 'a', 'psnr': 30.0, 'avg_bit': 4.0},
                                          {'name': 'mean', 'psnr': 30.0, 'avg_bit': 4.0}]
    assert sorted(os.listdir(tmp_path)) == ['Urban100_results.csv', 'Urban100_results.md']


# ---------------------------------------------------------------------------------------- tensorboard


def test_tensorboard_bit_map_and_histograms(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    sr = _textured(40, 64)
    bitmap = render_bit_map(sr, [(0, 40, 0, 32), (0, 40, 32, 64)], [4.5, 7.5])
    bits = torch.tensor([[4., 6., 8.], [5., 6., 8.], [4., 7., 8.], [8., 6., 4.], [6., 6., 6.]])

    log_bit_map(None, 'bitmap/x', bitmap, 0)  # no logger: no-op
    log_bit_histograms(None, 'bits', bits, 0)

    writer = SummaryWriter(log_dir=str(tmp_path))
    log_bit_map(writer, 'bitmap/baby', bitmap, 7)
    log_bit_histograms(writer, 'bits/Set5', bits, 7)
    log_bit_histograms(writer, 'bits/empty', torch.zeros(5, 0), 7)  # no selectors: nothing logged
    writer.close()

    acc = EventAccumulator(str(tmp_path), size_guidance={'images': 0, 'histograms': 0})
    acc.Reload()
    tags = acc.Tags()
    assert tags['images'] == ['bitmap/baby']
    assert sorted(tags['histograms']) == ['bits/Set5/all', 'bits/Set5/layer_00', 'bits/Set5/layer_01',
                                          'bits/Set5/layer_02']

    event = acc.Images('bitmap/baby')[0]
    assert event.step == 7 and (event.height, event.width) == bitmap.shape[:2]
    decoded = cv2.imdecode(np.frombuffer(event.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)  # -> BGR
    np.testing.assert_array_equal(decoded, bitmap)  # logged as RGB, so it round-trips to the same BGR

    for idx in range(3):
        hist = acc.Histograms(f'bits/Set5/layer_{idx:02d}')[0].histogram_value
        col = bits[:, idx]
        assert hist.num == 5 and hist.min == col.min() and hist.max == col.max()
        assert hist.sum == pytest.approx(float(col.sum()))
    overall = acc.Histograms('bits/Set5/all')[0]
    assert overall.step == 7 and overall.histogram_value.num == bits.numel()
    assert overall.histogram_value.sum == pytest.approx(float(bits.sum()))
