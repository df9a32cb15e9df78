"""BasicSR's MSRResNet, RRDBNet, RCAN and SwinIR through the three stages (the first one the bare network), a test
with bit maps and the BitOPs command, through the real ``basicsr`` command on tiny data and tiny networks."""
import csv
import glob
import os

import pytest
from tiny_workspace import OPTIONS, make_tiny_pairs, run_cli, tiny_stage_options

from cadyq_plugin.cli import main as cli_main
from cadyq_plugin.tools.derive_options import derive_options

# network -> (tiny backbone arguments, patch-wise test or None for image-wise, a quantized conv's name)
NETWORKS = {
    'msrresnet': ({'num_feat': 8, 'num_block': 2}, None, 'body.1.conv2'),
    'rrdbnet': ({'num_feat': 8, 'num_block': 1, 'num_grow_ch': 4}, {'patch': 6, 'step': 4, 'batch': 2},
                'body.0.rdb3.conv5'),
    'rcan': ({'num_feat': 16, 'num_group': 2, 'num_block': 1}, None, 'body.1.residual_group.0.rcab.2'),
    'swinir': ({'img_size': 8, 'window_size': 4, 'depths': [2], 'embed_dim': 12, 'num_heads': [2], 'mlp_ratio': 2},
               {'patch': 6, 'step': 4, 'batch': 2}, 'layers.0.conv'),
}


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return make_tiny_pairs(str(tmp_path_factory.mktemp('tiny_data')))


def tiny_network(stage, backbone):
    """Option overrides that shrink the stage's network(s): the bare backbone in stage 1, the wrapped one after."""
    if stage == 'fp':
        return {f'network_g.{k}': v for k, v in backbone.items()}
    return {f'{net}.backbone.{k}': v for k, v in backbone.items() for net in ('network_g', 'network_t')}


def train_log(workdir, name):
    return open(glob.glob(os.path.join(workdir, 'experiments', name, f'train_{name}_*.log'))[0]).read()


@pytest.mark.parametrize('network', sorted(NETWORKS))
def test_three_stages_test_and_bitops(network, data_root, tmp_path, capsys):
    backbone, patchwise, conv = NETWORKS[network]
    workdir = str(tmp_path)
    names = {}
    for stage in ('fp', 'pams', 'cadyq'):
        opt_path = tiny_stage_options(workdir, data_root, f'train_{network}', stage, total_iter=2,
                                      **tiny_network(stage, backbone))
        result = run_cli(['train', '-opt', opt_path], workdir)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        names[stage] = derive_options(opt_path, {}, opt_path)['name']
        assert os.path.isfile(os.path.join(workdir, 'experiments', names[stage], 'models', 'net_g_latest.pth'))
    assert 'l_pix:' in train_log(workdir, names['fp'])
    pams_log = train_log(workdir, names['pams'])
    assert f'Loaded CADyQWrapper from experiments/{names["fp"]}/models/net_g_latest.pth' in pams_log
    assert 'l_kd:' in pams_log and 'quantizer entries start from their initial values' in pams_log
    cadyq_log = train_log(workdir, names['cadyq'])
    assert all(key in cadyq_log for key in ('l_kd:', 'l_bit:', 'avg_bit:', '# bitops:'))

    test_opt = os.path.join(workdir, 'test.yml')
    derive_options(os.path.join(OPTIONS, f'test_{network}_cadyq_{"patch" if patchwise else "image"}.yml'), {
        'num_gpu': 0,
        'datasets': {'test_1': {'name': 'Tiny', 'type': 'CADyQPairedImageDataset', 'dataroot_gt': f'{data_root}/HR',
                                'dataroot_lq': f'{data_root}/LR', 'filename_tmpl': '{}',
                                'io_backend': {'type': 'disk'}}},
        'val.patchwise': patchwise,
        'path.pretrain_network_g': f'experiments/{names["cadyq"]}/models/net_g_latest.pth',
        **{f'network_g.backbone.{k}': v for k, v in backbone.items()},
    }, test_opt)
    result = run_cli(['test', '-opt', test_opt], workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = glob.glob(os.path.join(workdir, 'results', '*', 'Tiny_results.csv'))
    rows = list(csv.reader(open(results[0])))
    assert rows[0][:5] == ['image', 'PSNR (dB)', 'SSIM', 'FAB', 'BitOPs (G)'] and len(rows) == 1 + 4 + 1
    assert all(4 <= float(row[3]) <= 8 for row in rows[1:])
    bit_maps = glob.glob(os.path.join(os.path.dirname(results[0]), 'visualization', 'Tiny', '*_bitmap.png'))
    assert len(bit_maps) == 4

    capsys.readouterr()
    assert cli_main(['bitops', '-opt', os.path.join(workdir, f'train_{network}_cadyq.yml'), '--hr-size', '64x48']) == 0
    out = capsys.readouterr().out
    assert out.startswith('CADyQWrapper x4, output 64x48 (LR 16x12)')
    assert any(line.startswith(conv + ' ') and 'selector' in line for line in out.splitlines()), out
    assert 'BitOPs W8A8' in out
