"""The backends stage of the benchmark (``basicsr benchmark``) on tiny networks: it runs for every default
backbone and prints the FP32 / reference-layout int8 / full-integer table, time splits and checkpoint sizes. Speed
itself is not asserted (no timed tests)."""
import re

import torch

from cadyq_plugin.tools import backend_benchmark

TINY = {'EDSR_CADyQ': {'num_feat': 8, 'num_block': 1},
        'CARN_CADyQ': {'num_feat': 8, 'num_block': 1, 'num_res_block': 1},
        'IDN_CADyQ': {'num_feat': 16, 'num_block': 1, 'd': 4},
        'SRResNet_CADyQ': {'num_feat': 8, 'num_block': 1}}


def tiny_settings():
    generator = torch.Generator().manual_seed(0)
    return {'image-wise LR 16x20': (torch.rand(1, 3, 16, 20, generator=generator), None),
            'patch-wise LR 24x24 (12/10, batch 4)': (torch.rand(1, 3, 24, 24, generator=generator),
                                                     {'patch': 12, 'step': 10, 'batch': 4})}


def test_backends_stage_runs_every_default_backbone(capsys):
    """``archs=None`` means the four backbones; the full-integer
    network runs no float convolution at all, and its int8 checkpoint is smaller than its float one."""
    settings = tiny_settings()
    assert backend_benchmark.main(None, 1, False, backend_benchmark.DEFAULT_VARIANTS, TINY, settings) == 0
    out = capsys.readouterr().out
    rows = re.findall(r'^\| (\w+) \| (.+?) \| ([\d.]+) \((NCHW|channels-last)\) \| ([\d.]+) ms, ([\d.]+)x \| '
                      r'([\d.]+) ms, ([\d.]+)x \| (met|missed) \|$', out, re.M)
    expected = [(a, s) for a in backend_benchmark.DEFAULT_ARCHS for s in settings]
    assert [(r[0], r[1]) for r in rows] == expected * len(backend_benchmark.CLOCKS)  # a table per clock
    for row in rows:
        fp32, int8_ms, full_ms, full_ratio = float(row[2]), float(row[4]), float(row[6]), float(row[7])
        assert int8_ms > 0 and full_ms > 0 and abs(full_ratio - full_ms / fp32) <= 0.01 + 0.05 * full_ratio
        assert row[8] == ('met' if full_ratio <= backend_benchmark.FULL_TARGET else 'missed')
    splits = re.findall(r'time split (\w+) \([\d.]+ ms under the profiler\): (.+)$', out, re.M)
    assert len(splits) == 4 * len(backend_benchmark.SPLIT_VARIANTS)  # image-wise
    for name, shares in splits:
        share = dict((kind, int(pct)) for kind, pct in re.findall(r'(?:^|, )(.+?) (\d+)%', shares))
        assert abs(sum(share.values()) - 100) <= len(share)  # every kind plus the rest, rounded
        if name == 'int8_full':
            assert share['float convs'] == 0 and share['integer convs'] > 0, shares
        if name == 'fp32_cl':
            assert share['integer convs'] == 0 and share['float convs'] > 0, shares
    sizes = re.findall(r'full-integer float checkpoint ([\d.]+) MiB, full-integer int8 checkpoint ([\d.]+) MiB', out)
    assert len(sizes) == 4 and all(float(int8) < float(fp) for fp, int8 in sizes)


def test_fp32_baseline_is_the_faster_layout():
    assert backend_benchmark.fp32_baseline({'fp32_nchw': 2.0, 'fp32_cl': 1.5}) == (1.5, 'channels-last')
    assert backend_benchmark.fp32_baseline({'fp32_nchw': 1.0, 'fp32_cl': 1.5}) == (1.0, 'NCHW')
