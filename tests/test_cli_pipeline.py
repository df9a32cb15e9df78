"""The three training stages and a test of every backbone through the real ``basicsr`` command on tiny data."""
import csv
import glob
import os

import pytest
from tiny_workspace import OPTIONS, make_tiny_pairs, run_cli, tiny_stage_options

from cadyq_plugin.tools.derive_options import derive_options

# backbone -> (training options prefix, image-wise test options)
BACKBONES = {
    'edsr': ('train_edsrbaseline', 'test_edsrbaseline_cadyq_image.yml'),
    'carn': ('train_carn', 'test_carn_cadyq_image.yml'),
    'idn': ('train_idn', 'test_idn_cadyq_image.yml'),
    'srresnet': ('train_srresnet', 'test_srresnet_cadyq_image.yml'),
}


def tb_tags(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(log_dir, size_guidance={'images': 0, 'histograms': 0, 'scalars': 0})
    acc.Reload()
    tags = acc.Tags()
    return set(tags['scalars']), set(tags['images']), set(tags['histograms'])


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return make_tiny_pairs(str(tmp_path_factory.mktemp('tiny_data')))


@pytest.mark.parametrize('backbone', sorted(BACKBONES))
def test_three_stages_and_test(backbone, data_root, tmp_path):
    prefix, test_options = BACKBONES[backbone]
    workdir = str(tmp_path)
    names = []
    for stage in ('fp', 'pams', 'cadyq'):
        opt_path = tiny_stage_options(workdir, data_root, prefix, stage)
        result = run_cli(['train', '-opt', opt_path], workdir)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        name = derive_options(opt_path, {}, opt_path)['name']
        names.append(name)
        exp = os.path.join(workdir, 'experiments', name)
        for ckpt in ('net_g_2.pth', 'net_g_4.pth', 'net_g_latest.pth'):
            assert os.path.isfile(os.path.join(exp, 'models', ckpt)), ckpt
        assert os.path.isfile(os.path.join(exp, 'training_states', '4.state'))
        log = open(glob.glob(os.path.join(exp, f'train_{name}_*.log'))[0]).read()
        assert 'l_pix:' in log
        if stage != 'fp':
            assert 'l_kd:' in log and 'Loaded' in log
    log = open(glob.glob(os.path.join(workdir, 'experiments', names[2], 'train_*.log'))[0]).read()
    assert 'l_bit:' in log and 'avg_bit:' in log and '# bitops:' in log

    scalars, images, histograms = tb_tags(os.path.join(workdir, 'tb_logger', names[2]))
    assert {'losses/l_pix', 'losses/l_kd', 'losses/l_bit', 'avg_bit', 'metrics/Set5/psnr', 'metrics/Set5/ssim',
            'metrics/Set5/avg_bit', 'metrics/Set5/bitops'} <= scalars
    assert any(tag.startswith('bit_maps/Set5/') for tag in images)
    assert any(tag.startswith('bits/Set5/layer_') for tag in histograms)

    test_opt = os.path.join(workdir, 'test.yml')
    derive_options(os.path.join(OPTIONS, test_options), {
        'num_gpu': 0,
        'datasets': {'test_1': {'name': 'Tiny', 'type': 'CADyQPairedImageDataset', 'dataroot_gt': f'{data_root}/HR',
                                'dataroot_lq': f'{data_root}/LR', 'filename_tmpl': '{}',
                                'io_backend': {'type': 'disk'}}},
        'path.pretrain_network_g': f'experiments/{names[2]}/models/net_g_latest.pth',
    }, test_opt)
    result = run_cli(['test', '-opt', test_opt], workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = glob.glob(os.path.join(workdir, 'results', '*', 'Tiny_results.csv'))
    assert len(results) == 1
    rows = list(csv.reader(open(results[0])))
    assert rows[0][:5] == ['image', 'PSNR (dB)', 'SSIM', 'FAB', 'BitOPs (G)']
    assert [r[0] for r in rows[1:]][-1] == 'mean' and len(rows) == 1 + 4 + 1
    assert all(2 <= float(r[3]) <= 8 for r in rows[1:])
    bit_maps = glob.glob(os.path.join(os.path.dirname(results[0]), 'visualization', 'Tiny', '*_bitmap.png'))
    assert len(bit_maps) == 4
