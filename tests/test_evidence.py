"""The content evidence tool: its held-out photos, its per-patch statistics (checked against the network run on each
patch alone and against the whole image), the rank correlations, tables and figures, and the command end to end."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import cadyq_plugin  # noqa: F401  (compat shim before basicsr)
from cadyq_plugin.archs import EDSR_CADyQ
from cadyq_plugin.data.patches import patch_boxes
from cadyq_plugin.data.quickstart_data import TRAIN_PHOTOS
from cadyq_plugin.quant.image_feature import image_gradient_feature
from cadyq_plugin.tools import evidence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATCHWISE = {'patch': 24, 'step': 18, 'batch': 3}


def test_the_heldout_photos_are_none_the_quickstart_trains_on():
    photos = evidence.heldout_photos()
    assert sorted(photos) == sorted(evidence.HELDOUT)
    assert not set(photos) & {name for name, _ in TRAIN_PHOTOS}
    train_shapes = {load().shape[:2] for _, load in TRAIN_PHOTOS}
    for name, img in photos.items():
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, name
        assert img.shape[:2] not in train_shapes or name in ('camera', 'moon', 'brick', 'grass', 'gravel'), name
    assert sorted(evidence.heldout_photos(['coins', 'text'])) == ['coins', 'text']


@pytest.fixture(scope='module')
def pairs(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('heldout')
    names = ['coins', 'text']
    return evidence.load_pairs(*evidence.build_heldout(str(workdir), names), names)


def test_heldout_pairs_are_mod_cropped_hr_and_its_bicubic_lr(pairs):
    from basicsr.utils.matlab_functions import imresize
    for name, hr, lr in pairs:
        assert hr.shape[0] % 4 == 0 and hr.shape[1] % 4 == 0
        assert tuple(lr.shape[2:]) == (hr.shape[0] // 4, hr.shape[1] // 4)
        expected = np.clip(imresize(hr.astype(np.float32) / 255.0, 0.25), 0, 1)[:, :, ::-1]
        assert np.abs(lr[0].permute(1, 2, 0).numpy() - expected).max() <= 0.5 / 255 + 1e-6, name


def test_per_patch_statistics_match_the_network_run_on_each_patch_alone(pairs):
    torch.manual_seed(0)
    net = EDSR_CADyQ(num_feat=8, num_block=1, quant_mode='cadyq', calib_iters=0).eval()
    gradients = [image_gradient_feature(lr[:, :, y0:y1, x0:x1], net.grad_scale)[0, 0].item()
                 for _, _, lr in pairs for y0, y1, x0, x1 in patch_boxes(lr.shape[2], lr.shape[3], 24, 18)]
    median = float(np.median(gradients))
    with torch.no_grad():  # selectors that choose by the patch's d/dx gradient: 4, 6 above the median, 8 above 1.5x
        for module in net.modules():
            if hasattr(module, 'fc'):
                module.fc.weight.zero_()
                module.fc.weight[:, 0] = torch.tensor([0.0, 5.0, 10.0]) / median
                module.fc.bias.copy_(torch.tensor([0.0, -5.0, -12.5]))
    result, outputs = evidence.evaluate(net, pairs, PATCHWISE)
    patches = result['patches']
    boxes = [(name, box) for name, _, lr in pairs for box in patch_boxes(lr.shape[2], lr.shape[3], 24, 18)]
    assert len(patches) == len(boxes)
    lrs = {name: lr for name, _, lr in pairs}
    for patch, (name, (y0, y1, x0, x1)) in zip(patches, boxes):
        crop = lrs[name][:, :, y0:y1, x0:x1]
        with torch.no_grad():
            _, aux = net(crop, return_aux=True)
        assert patch['photo'] == name
        assert patch['fab'] == pytest.approx(aux['bits'].float().mean().item())
        assert patch['gradient'] == pytest.approx(image_gradient_feature(crop).sum().item())
    assert len({p['fab'] for p in patches}) > 1, 'the patches chose different bits'
    for (name, hr, _), image in zip(pairs, result['images']):
        sr = outputs[name][0]
        mine = [p for p in patches if p['photo'] == name]
        whole = ((sr.astype(np.float64) - hr.astype(np.float64))**2).mean(axis=2)
        assert sum(p['pixels'] for p in mine) == whole.size, 'the patches tile the image'
        assert sum(p['sq_error'] for p in mine) == pytest.approx(whole.sum())
        assert image['fab'] == pytest.approx(np.mean([p['fab'] for p in mine]))


def test_content_relation_is_spearmans_rank_correlation():
    fab = [4.0, 5.0, 6.5, 7.0, 8.0]
    cadyq = {'patches': [{'fab': f, 'gradient': g} for f, g in zip(fab, [0.01, 0.02, 0.5, 0.6, 3.0])]}
    pams8 = {'patches': [{'sq_error': e, 'pixels': 10} for e in [50.0, 40.0, 30.0, 20.0, 10.0]]}
    relation = evidence.content_relation(cadyq, pams8)
    assert relation['rho_gradient'] == pytest.approx(1.0) and relation['rho_pams8_error'] == pytest.approx(-1.0)
    assert (relation['n_patches'], relation['fab_min'], relation['fab_max']) == (5, 4.0, 8.0)
    pams8['patches'][0]['sq_error'] = 15.0  # ranks 2 1 ... of the errors: rho by the rank formula
    d = np.array([1, 2, 3, 4, 5]) - np.array([2, 5, 4, 3, 1])
    expected = 1 - 6 * (d**2).sum() / (5 * (25 - 1))
    assert evidence.content_relation(cadyq, pams8)['rho_pams8_error'] == pytest.approx(expected)


def test_tables_and_figures(tmp_path):
    budget = [{'arch': 'carn', 'target': 6.0, 'train_fab': 6.1, 'net_fab': 6.3, 'val_fab': 6.9, 'heldout_fab': 5.5},
              {'arch': 'idn', 'target': 5.0, 'train_fab': 5.3, 'net_fab': 5.3, 'val_fab': 5.0, 'heldout_fab': 5.0}]
    table = evidence.format_budget_table(budget)
    assert '| CARN | 6.00 | 6.10 | 6.30 | yes | 6.90 | 5.50 |' in table and '| IDN | 5.00 | 5.30 | 5.30 | no |' in table
    content = [{'arch': 'edsr', 'target': 6.0, 'n_patches': 20, 'fab_min': 4.5, 'fab_max': 7.9, 'rho_gradient': 0.61,
                'p_gradient': 0.004, 'rho_pams8_error': 0.5, 'p_pams8_error': 0.02}]
    assert '| EDSR-baseline | 6.00 | 20 | 4.50 - 7.90 | +0.61 (p 0.004) | +0.50 (p 0.02) |' in \
        evidence.format_content_table(content)
    quality = {'edsr': {'fixed': [{'bits': 8, 'psnr': 26.0, 'ssim': 0.7, 'fab': None},
                                  {'bits': 4, 'psnr': 25.0, 'ssim': 0.6, 'fab': None}], 'fp': 26.1,
                        'cadyq': [{'target': 5.0, 'fab': 5.2, 'psnr': 25.6, 'ssim': 0.65}]}}
    table = evidence.format_quality_table(quality).splitlines()
    assert table[2:] == ['| EDSR-baseline | PAMS 4-bit | 4.00 | 25.00 | 0.6000 |',
                         '| EDSR-baseline | PAMS 8-bit | 8.00 | 26.00 | 0.7000 |',
                         '| EDSR-baseline | CADyQ, target 5 | 5.20 | 25.60 | 0.6500 |']
    evidence.plot_quality(quality, str(tmp_path / 'q.png'))
    patches = {'patches': [{'fab': 4 + i / 5, 'gradient': 0.01 * (i + 1), 'sq_error': 10.0 * i + 1, 'pixels': 4}
                           for i in range(10)]}
    relation = {'edsr': {**content[0], 'rho_gradient': 1.0, 'rho_pams8_error': 1.0}}
    evidence.plot_content(relation, {'edsr': (patches, patches)}, str(tmp_path / 'c.png'))
    image = np.zeros((40, 60, 3), np.uint8)
    evidence.plot_bit_maps({'edsr': [('a', image, 6.0), ('b', image, 6.0)]}, str(tmp_path / 'm.png'))
    for name in ('q', 'c', 'm'):
        assert (tmp_path / f'{name}.png').read_bytes()[:4] == b'\x89PNG'


@pytest.mark.parametrize('text, parsed', [('num_block=4', (None, 'num_block', 4)),
                                          ('edsr:num_feat=32', ('edsr', 'num_feat', 32))])
def test_network_settings_parse_for_one_backbone_or_all(text, parsed):
    assert evidence.network_setting(text) == parsed


@pytest.mark.parametrize('text', ['num_block', 'num_block=x', 'rcan:num_feat=8', '4=4', 'num_feat=-8'])
def test_bad_network_settings_are_named(text):
    import argparse
    with pytest.raises(argparse.ArgumentTypeError, match='expected \\[ARCH:\\]KEY=INTEGER'):
        evidence.network_setting(text)


def test_a_backbones_network_setting_overrides_the_common_one_for_it_only():
    from argparse import Namespace

    from cadyq_plugin.tools.budget_evidence import network_overrides
    args = Namespace(network=evidence.network_settings([evidence.network_setting(t) for t in (
        'num_block=2', 'edsr:num_block=8', 'edsr:num_feat=32')]))
    assert network_overrides(args, 'fp', 'edsr') == {'network_g.num_block': 8, 'network_g.num_feat': 32}
    assert network_overrides(args, 'cadyq', 'carn') == {'network_g.num_block': 2, 'network_t.num_block': 2}
    assert network_overrides(Namespace(), 'pams', 'idn') == {}


def _log_mean_fab(log, tail):
    """The mean ``avg_bit`` of the last ``tail`` of a training log's iteration lines, read here with a regex of
    its own (the second code path of the tool's log parsing)."""
    import re
    values = [float(m.group(1)) for m in re.finditer(r'avg_bit: ([-+.\de]+)', log.read_text())]
    last = values[-max(1, round(len(values) * tail)):]
    return sum(last) / len(last)


def test_the_evidence_command_end_to_end_and_reuses_finished_runs(tmp_path):
    """``basicsr evidence`` on a small EDSR-baseline with a few iterations and two small photos: every stage is
    trained through ``basicsr train`` with the ``--network`` sizes, the budget row is the training log's, the
    tables and figures are written; a second run trains nothing again and gives the same results."""
    import json

    import cv2
    import yaml
    figures, work = tmp_path / 'figures', tmp_path / 'work'
    command = [sys.executable, '-m', 'cadyq_plugin.cli', 'evidence', '--archs', 'edsr', '--iters', '2', '1',
               '5', '--targets', '6', '--content-target', '6', '--quality', 'edsr', '--quality-targets', '6',
               '--fixed-bits', '8', '--photos', 'coins', 'text', '--bit-map-photos', 'coins', 'text', '--network',
               'num_block=1', 'edsr:num_feat=8', '--workdir', str(work), '--figures', str(figures)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert '| EDSR-baseline | 6.00 |' in proc.stdout and 'PAMS 8-bit' in proc.stdout
    assert sorted(os.listdir(figures)) == ['bit_maps.png', 'budget_fab.png', 'content_scatter.png', 'psnr_fab.png']
    assert all((figures / f).read_bytes()[:4] == b'\x89PNG' for f in os.listdir(figures))
    for name, nets in (('train_edsrbaseline_fp', ('network_g',)), ('train_edsrbaseline_pams', ('network_g', 'network_t')),
                       ('budget_edsr_fab6', ('network_g', 'network_t')), ('evidence_edsr_pams8_6it', ('network_g',))):
        with open(work / 'options' / f'{name}.yml') as f:
            opt = yaml.safe_load(f)
        assert all((opt[net]['num_feat'], opt[net]['num_block']) == (8, 1) for net in nets), name
    report = json.loads((work / 'evidence.json').read_text())
    (row,) = report['budget']
    log = next((work / 'experiments' / 'budget_edsr_fab6').glob('train_*.log'))
    assert row['train_fab'] == pytest.approx(_log_mean_fab(log, 0.2))
    (content,) = report['content']
    lrs = [cv2.imread(str(work / 'heldout' / 'LR' / f'{name}.png')) for name in ('coins', 'text')]
    assert content['n_patches'] == sum(len(patch_boxes(*lr.shape[:2], 96, 90)) for lr in lrs)
    assert content['fab_min'] <= row['heldout_fab'] <= content['fab_max']
    assert (work / 'evidence.md').read_text().startswith(evidence.format_budget_table(report['budget']))

    trained = {p: p.stat().st_mtime_ns for p in work.glob('experiments/*/models/net_g_latest.pth')}
    assert len(trained) == 4  # FP, PAMS W8A8, CADyQ to 6, the fixed 8-bit PAMS network
    again = subprocess.run(command, capture_output=True, text=True, timeout=900,
                           env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in work.glob('experiments/*/models/net_g_latest.pth')} == trained
    rerun = json.loads((work / 'evidence.json').read_text())
    assert (rerun['budget'], rerun['content'], rerun['quality']) == (report['budget'], report['content'],
                                                                   report['quality'])
