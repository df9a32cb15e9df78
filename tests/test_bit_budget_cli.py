"""A bit budget through the real ``basicsr`` command on tiny data: what training logs (message log and TensorBoard),
an exact ``--auto_resume`` of the controller, and ``basicsr test``'s report of target vs reached."""
import os
import re

import pytest
import torch
from tiny_workspace import OPTIONS, logged_losses, make_tiny_pairs, run_cli, tiny_stage_options

import cadyq_plugin  # noqa: F401  (compat shim before basicsr)
from basicsr.archs import build_network
from cadyq_plugin.models.stage_loading import load_stage_weights
from cadyq_plugin.reporting import read_results_csv
from cadyq_plugin.tools.derive_options import derive_options

TINY = {'num_feat': 16, 'num_block': 2}
BUDGET_VALUES = re.compile(r'target_fab: 6\.0000e\+00 running_fab: (\S+) bit_price: (\S+) ')


@pytest.fixture(scope='module')
def ws(tmp_path_factory):
    """Tiny pairs and tiny FP -> PAMS EDSR checkpoints (the outputs of stages 1-2)."""
    root = tmp_path_factory.mktemp('budget')
    torch.manual_seed(0)
    fp = build_network({'type': 'EDSR_CADyQ', 'quant_mode': 'fp', **TINY})
    pams = build_network({'type': 'EDSR_CADyQ', 'quant_mode': 'pams', **TINY})
    load_stage_weights(pams, fp.state_dict(), 'fp')
    torch.save({'params': pams.state_dict()}, root / 'pams.pth')
    return {'root': root, 'data': make_tiny_pairs(str(root / 'data')), 'pams': str(root / 'pams.pth')}


def budget_options(ws, workdir, total_iter, use_tb=False):
    os.makedirs(workdir, exist_ok=True)
    keys = {f'network_{n}.{k}': v for n in 'gt' for k, v in TINY.items()}
    keys.update({'path.pretrain_network_g': ws['pams'], 'path.pretrain_network_t': ws['pams'], 'name': 'budget',
                 'train.bit_opt.target_fab': 6.0,
                 'train.optim_selector.lr': 1e-3, 'logger.save_checkpoint_freq': 3, 'val.val_freq': 3,
                 'logger.use_tb_logger': use_tb})
    return tiny_stage_options(str(workdir), ws['data'], 'train_edsrbaseline', 'cadyq', total_iter=total_iter, **keys)


@pytest.fixture(scope='module')
def trained(ws):
    """One uninterrupted 6-iteration run with TensorBoard."""
    workdir = ws['root'] / 'uninterrupted'
    proc = run_cli(['train', '-opt', budget_options(ws, workdir, 6, use_tb=True)], cwd=str(workdir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {'dir': workdir, 'output': proc.stderr}


def test_training_logs_target_running_fab_and_price_every_print_freq(trained):
    values = logged_losses(os.path.join(trained['dir'], 'experiments', 'budget'))
    assert sorted(values) == [1, 2, 3, 4, 5, 6]
    budget = [BUDGET_VALUES.search(v[0]) for _, v in sorted(values.items())]
    assert all(budget), values
    assert float(budget[0].group(1)) == float(re.search(r'avg_bit: (\S+)', values[1][0]).group(1)), 'r_1 = batch'
    assert 'l_bit' not in values[1][0], 'a budget adds no bit loss'
    assert "Bit budget: target_fab 6 (mean bit 6.0000), held by a price on the selectors' logits" in trained['output']
    lines = re.findall(r'Bit budget on Set5: target_fab 6\.00 \| reached FAB (\S+) \(\S+\), BitOPs \S+ G at 1280x720 '
                       r'\| psnr \S+', trained['output'])
    assert len(lines) == 3, 'validation at 3, 6 and after the end'


def test_tensorboard_gets_the_budget_next_to_the_bits(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(trained['dir'] / 'tb_logger' / 'budget')).Reload()
    tags = set(events.Tags()['scalars'])
    assert {'target_fab', 'running_fab', 'bit_price', 'avg_bit'} <= tags and 'losses/l_bit' not in tags
    assert {'metrics/Set5/avg_bit', 'metrics/Set5/avg_bit_target'} <= tags
    targets = [e.value for e in events.Scalars('metrics/Set5/avg_bit_target')]
    assert len(targets) == len(events.Scalars('metrics/Set5/avg_bit')) >= 2 and set(targets) == {6.0}
    assert [e.step for e in events.Scalars('running_fab')] == [1, 2, 3, 4, 5, 6]


def test_auto_resume_continues_the_controller_exactly(ws, trained):
    """Stopped after the state of iteration 3 and resumed to 6: the same target, running FAB, price and losses
    are logged for iterations 4-6 as by the uninterrupted run."""
    workdir = ws['root'] / 'resumed'
    opt = budget_options(ws, workdir, 3)
    proc = run_cli(['train', '-opt', opt], cwd=str(workdir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli(['train', '-opt', opt, '--auto_resume', '--force_yml', 'train:total_iter=6'], cwd=str(workdir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Resuming training from epoch: ' in proc.stderr and ', iter: 3.' in proc.stderr
    state = torch.load(os.path.join(workdir, 'experiments', 'budget', 'training_states', '6.state'), weights_only=True)
    assert state['cadyq']['bit_budget']['steps'] == 6
    reference, resumed = (logged_losses(os.path.join(root, 'experiments', 'budget'))
                          for root in (trained['dir'], workdir))
    for it in (4, 5, 6):
        assert resumed[it] == reference[it], it


def test_basicsr_test_reports_target_against_reached(ws, trained, tmp_path):
    data = ws['data']
    test_opt = derive_options(os.path.join(OPTIONS, 'test_edsrbaseline_cadyq_image.yml'), {
        'name': 'budget_test', 'num_gpu': 0,
        'datasets': {'test_1': {'name': 'tiny', 'type': 'CADyQPairedImageDataset', 'filename_tmpl': '{}',
                                'dataroot_gt': os.path.join(data, 'HR'), 'dataroot_lq': os.path.join(data, 'LR'),
                                'io_backend': {'type': 'disk'}}},
        'network_g': {'type': 'EDSR_CADyQ', 'quant_mode': 'cadyq', 'upscale': 4, **TINY},
        'path.pretrain_network_g': str(trained['dir'] / 'experiments' / 'budget' / 'models' / 'net_g_latest.pth'),
        'val.save_img': False, 'val.target_fab': 6.0}, str(tmp_path / 'test.yml'))
    proc = run_cli(['test', '-opt', str(tmp_path / 'test.yml')], cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_results_csv(str(tmp_path / 'results' / test_opt['name'] / 'tiny_results.csv'))
    assert [r['name'] for r in rows[-2:]] == ['target', 'mean']
    assert rows[-2] == {'name': 'target', 'avg_bit': 6.0}
    reached = rows[-1]['avg_bit']
    assert re.search(rf'Bit budget on tiny: target_fab 6\.00 \| reached FAB {reached:.2f} ', proc.stderr)
