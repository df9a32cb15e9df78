"""Reliability: crash-safe checkpoints, safe loading, exact resume after SIGKILL, non-finite steps, bad data.

Unit checks run in-process on tiny networks; the crash, NaN and bad-data checks run the real ``basicsr``
command on tiny real data (``tests/tiny_workspace.py``), each a few seconds on a CPU.
"""
import argparse
import glob
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time

import cv2
import lmdb
import numpy as np
import pytest
import torch

import cadyq_plugin  # noqa: F401  (compat shim before basicsr)
from basicsr.archs import build_network
from cadyq_plugin.checkpoint import CheckpointError
from cadyq_plugin.data.lmdb_writer import make_lmdb
from cadyq_plugin.data.paired_dataset import CADyQPairedImageDataset, DataError
from cadyq_plugin.models import CADyQModel, CADyQSRModel
from cadyq_plugin.models.stage_loading import load_stage_weights
from cadyq_plugin.models.step_guard import TrainingDivergedError
from cadyq_plugin.resume import (ResumableSampler, SampleKey, SeededDataset, capture_rng_state, consumed_batches,
                                 load_resume_state, restore_rng_state)
from tiny_workspace import logged_losses, make_tiny_pairs, run_cli, tiny_stage_options

SMALL_ARCHS = {
    'EDSR_CADyQ': dict(num_feat=16, num_block=2),
    'CARN_CADyQ': dict(num_feat=16, num_block=2, num_res_block=2),
    'IDN_CADyQ': dict(num_feat=32, d=8, s=4, num_block=2),
    'SRResNet_CADyQ': dict(num_feat=16, num_block=3),
}
TINY_NET = {'network_g.num_feat': 16, 'network_g.num_block': 2}


@pytest.fixture(scope='module')
def ws(tmp_path_factory):
    """Tiny real pairs (4 photos, HR 48 / LR 12) and tiny FP / PAMS EDSR checkpoints (stage 1-2 outputs)."""
    root = tmp_path_factory.mktemp('reliability')
    data = make_tiny_pairs(str(root / 'data'))
    torch.manual_seed(0)
    fp = build_network({'type': 'EDSR_CADyQ', 'quant_mode': 'fp', **SMALL_ARCHS['EDSR_CADyQ']})
    pams = build_network({'type': 'EDSR_CADyQ', 'quant_mode': 'pams', **SMALL_ARCHS['EDSR_CADyQ']})
    load_stage_weights(pams, fp.state_dict(), 'fp')
    torch.save({'params': fp.state_dict()}, root / 'fp.pth')
    torch.save({'params': pams.state_dict()}, root / 'pams.pth')
    return {'root': root, 'data': data, 'fp': str(root / 'fp.pth'), 'pams': str(root / 'pams.pth')}


def stage_options(ws, workdir, stage, total_iter, **overrides):
    keys = dict(TINY_NET)
    keys.update({'logger.use_tb_logger': False})
    if stage == 'fp':
        keys['path.pretrain_network_g'] = ws['fp']
    else:
        keys.update({'network_t.num_feat': 16, 'network_t.num_block': 2, 'path.pretrain_network_t': ws['pams'],
                     'path.pretrain_network_g': ws['pams']})
    keys.update(overrides)
    os.makedirs(workdir, exist_ok=True)
    return tiny_stage_options(str(workdir), ws['data'], 'train_edsrbaseline', stage, total_iter=total_iter, **keys)


def experiment(workdir):
    dirs = [d for d in glob.glob(os.path.join(workdir, 'experiments', '*')) if '_archived_' not in d]
    assert len(dirs) == 1, dirs
    return dirs[0]


def load_params(path):
    return torch.load(path, map_location='cpu', weights_only=True)['params']


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


def assert_same_curves(reference, resumed, first, last):
    """Every logged value of ``resumed`` (each iteration may be logged twice: before the kill and after the
    resume) is the same text as the uninterrupted run's, for every iteration ``first..last``."""
    for it in range(first, last + 1):
        assert it in resumed, f'iteration {it} was never logged by the resumed run'
        assert len(reference[it]) == 1
        assert all(v == reference[it][0] for v in resumed[it]), (it, reference[it], resumed[it])


def sr_model(network_opt, load_path, strict=True):
    opt = {'name': 'unit', 'num_gpu': 0, 'is_train': False, 'dist': False, 'rank': 0, 'world_size': 1,
           'network_g': dict(network_opt), 'path': {'pretrain_network_g': load_path, 'strict_load_g': strict}}
    return CADyQSRModel(opt)


# ============================================================================================ 1. checkpoints
def test_saves_are_atomic_a_crash_mid_write_keeps_the_previous_file(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = sr_model({'type': 'EDSR_CADyQ', 'quant_mode': 'fp', **SMALL_ARCHS['EDSR_CADyQ']}, None)
    model.opt['path'].update(models=str(tmp_path / 'models'), training_states=str(tmp_path / 'states'))
    model.save_network(model.net_g, 'net_g', 5)
    target = tmp_path / 'models' / 'net_g_5.pth'
    good = target.read_bytes()
    real_save = torch.save

    def killed_mid_write(obj, f, *args, **kwargs):
        f.write(b'half a checkpoint')
        raise KeyboardInterrupt('killed')  # not an OSError: never retried, like a kill

    monkeypatch.setattr(torch, 'save', killed_mid_write)
    with torch.no_grad():
        model.net_g.conv_first.weight.add_(1)
    with pytest.raises(KeyboardInterrupt):
        model.save_network(model.net_g, 'net_g', 5)
    assert target.read_bytes() == good
    assert os.listdir(tmp_path / 'models') == ['net_g_5.pth'], 'no temporary file left behind'

    def disk_full(obj, f, *args, **kwargs):
        f.write(b'partial')
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(torch, 'save', disk_full)
    monkeypatch.setattr(time, 'sleep', lambda s: None)
    with pytest.raises(CheckpointError, match=r'cannot save network .*net_g_5\.pth.*No space left.*intact'):
        model.save_network(model.net_g, 'net_g', 5)
    assert target.read_bytes() == good and os.listdir(tmp_path / 'models') == ['net_g_5.pth']
    monkeypatch.setattr(torch, 'save', real_save)
    assert load_params(target).keys() == model.net_g.state_dict().keys()


def test_training_state_holds_rng_states_as_plain_tensors(tmp_path):
    model = sr_model({'type': 'EDSR_CADyQ', 'quant_mode': 'fp', **SMALL_ARCHS['EDSR_CADyQ']}, None)
    model.opt['path']['training_states'] = str(tmp_path)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    model.save_training_state(epoch=2, current_iter=7)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    state = torch.load(tmp_path / '7.state', map_location='cpu', weights_only=True)
    assert state['epoch'] == 2 and state['iter'] == 7 and state['cadyq']['bad_steps'] == 0
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(state['cadyq']['rng'])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def _pickled_checkpoint(path, state_dict):
    torch.save({'params': state_dict, 'args': argparse.Namespace(scale=4)}, path)
    return str(path)


def test_pretrained_weights_load_with_weights_only(tmp_path):
    net_opt = {'type': 'EDSR_CADyQ', 'quant_mode': 'fp', **SMALL_ARCHS['EDSR_CADyQ']}
    path = _pickled_checkpoint(tmp_path / 'pickled.pth', build_network(net_opt).state_dict())
    with pytest.raises(CheckpointError, match='pickled.pth'):
        sr_model(net_opt, path)
    basicsr_arch = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'upscale': 2}
    path = _pickled_checkpoint(tmp_path / 'pickled_basicsr.pth', build_network(basicsr_arch).state_dict())
    with pytest.raises(CheckpointError, match='pickled_basicsr.pth'):
        sr_model(basicsr_arch, path)


def test_a_training_state_that_is_not_plain_data_is_refused_by_name(tmp_path):
    path = tmp_path / '10.state'
    torch.save({'iter': 10, 'epoch': 0, 'optimizers': [], 'schedulers': [], 'x': argparse.Namespace()}, path)
    opt = {'name': 'x', 'auto_resume': False, 'path': {'resume_state': str(path)}}
    with pytest.raises(CheckpointError, match=r"cannot load training state '.*10\.state'.*previous one"):
        load_resume_state(opt)


def test_converter_unpickles_only_with_trusted(tmp_path, capsys):
    from cadyq_plugin.tools.convert import main as convert
    net = build_network({'type': 'EDSR_CADyQ', 'quant_mode': 'fp'})
    src = _pickled_checkpoint(tmp_path / 'original.pth', net.state_dict())
    dst = tmp_path / 'converted.pth'
    args = [src, str(dst), '--arch', 'EDSR_CADyQ', '--quant-mode', 'fp']
    assert convert(args) == 1
    assert '--trusted' in capsys.readouterr().err and not dst.exists()
    assert convert(args + ['--trusted']) == 0
    assert_same_weights(load_params(dst), net.state_dict())


@pytest.mark.parametrize('arch, ckpt_arch', [(a, b) for a in sorted(SMALL_ARCHS) for b in sorted(SMALL_ARCHS)
                                             if a != b])
def test_stage1_refuses_a_checkpoint_of_another_backbone_even_with_strict_false(tmp_path, arch, ckpt_arch):
    path = tmp_path / 'other.pth'
    torch.save({'params': build_network({'type': ckpt_arch, 'quant_mode': 'fp', 'upscale': 2,
                                         **SMALL_ARCHS[ckpt_arch]}).state_dict()}, path)
    net_opt = {'type': arch, 'quant_mode': 'fp', 'upscale': 2, **SMALL_ARCHS[arch]}
    pattern = rf"checkpoint '.*other\.pth' does not fit {arch}.*\n  (missing|unexpected|shape)"
    with pytest.raises(CheckpointError, match=pattern):
        sr_model(net_opt, str(path), strict=False)


@pytest.mark.parametrize('ckpt, fragment', [
    ({'quant_mode': 'fp', 'upscale': 2}, 'unexpected key upsample.2.weight'),  # x4 checkpoint into x2
    ({'quant_mode': 'fp', 'upscale': 3}, 'shape of upsample.0.weight'),
    ({'quant_mode': 'pams', 'upscale': 4}, 'unexpected key body.0.quant_in.alpha'),  # a later stage into fp
    ({'quant_mode': 'fp', 'upscale': 4, 'num_feat': 8}, 'shape of conv_first.weight'),
])
def test_stage1_refuses_another_scale_mode_or_size(tmp_path, ckpt, fragment):
    saved = {'quant_mode': 'fp', 'upscale': 4, **SMALL_ARCHS['EDSR_CADyQ']}
    path = tmp_path / 'edsr.pth'
    torch.save({'params': build_network({'type': 'EDSR_CADyQ', **saved}).state_dict()}, path)
    net_opt = {'type': 'EDSR_CADyQ', **SMALL_ARCHS['EDSR_CADyQ'], **ckpt}
    if ckpt['quant_mode'] == 'pams':  # load the pams checkpoint into the fp network instead
        torch.save({'params': build_network({'type': 'EDSR_CADyQ', **saved, 'quant_mode': 'pams'}).state_dict()},
                   path)
        net_opt['quant_mode'] = 'fp'
    with pytest.raises(CheckpointError, match=re.escape(fragment)):
        sr_model(net_opt, str(path), strict=False)


def test_stage1_loads_its_own_checkpoint_strictly(tmp_path):
    net_opt = {'type': 'EDSR_CADyQ', 'quant_mode': 'fp', **SMALL_ARCHS['EDSR_CADyQ']}
    source = build_network(net_opt)
    torch.save({'params': source.state_dict()}, tmp_path / 'ok.pth')
    assert_same_weights(sr_model(net_opt, str(tmp_path / 'ok.pth')).net_g.state_dict(), source.state_dict())


# ============================================================================================ 3. crashes
def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(5), np.random.seed(6), torch.manual_seed(7)
    np.random.randn()  # a cached Gaussian in NumPy's state
    torch.save(capture_rng_state(), tmp_path / 'rng.pt')
    expected = (random.random(), random.gauss(0, 1), np.random.randn(3).tolist(), torch.randn(3).tolist())
    restore_rng_state(torch.load(tmp_path / 'rng.pt', weights_only=True))
    assert (random.random(), random.gauss(0, 1), np.random.randn(3).tolist(), torch.randn(3).tolist()) == expected


def test_resumable_sampler_continues_an_epoch():
    dataset = list(range(10))
    full = ResumableSampler(dataset, 1, 0)
    full.set_epoch(3)
    order = list(full)
    resumed = ResumableSampler(dataset, 1, 0)
    resumed.resume(epoch=3, skip=4)
    assert len(list(resumed)) == 10, 'epoch 0 (before the loop sets the epoch) is not touched'
    resumed.set_epoch(3)
    assert list(resumed) == order[4:]
    assert list(resumed) == order[4:], 'every iterator of the resumed epoch (BasicSR makes a throwaway one)'
    resumed.set_epoch(4)
    full.set_epoch(4)
    assert list(resumed) == list(full), 'later epochs are complete'
    assert all(isinstance(k, SampleKey) for k in order) and len({k.seed for k in order}) == 10
    assert consumed_batches(state_epoch=3, state_iter=17, batches_per_epoch=5) == 2
    assert consumed_batches(state_epoch=3, state_iter=21, batches_per_epoch=5) is None


def test_sigkill_at_the_first_saved_state_then_auto_resume_continues_exactly(ws, tmp_path):
    """Stage 3 (teacher, calibration, selectors, bit loss, 2 dataloader workers): a run killed with SIGKILL right
    after its first training state appears resumes with --auto_resume, reaches the same final iteration, logs
    the same l_pix/l_kd/l_bit/avg_bit for every iteration and ends with bit-identical weights."""
    total = 30
    overrides = {'logger.save_checkpoint_freq': 7, 'val.val_freq': 9, 'datasets.train.num_worker_per_gpu': 2,
                 'datasets.train.type': 'CADyQPairedImageDataset',
                 'datasets.train.dataset_enlarge_ratio': 10, 'network_g.calib_iters': 3,
                 'train.bit_opt.loss_weight': 0.05, 'train.optim_selector.lr': 0.05}
    ref_dir, run_dir = tmp_path / 'uninterrupted', tmp_path / 'killed'
    proc = run_cli(['train', '-opt', stage_options(ws, ref_dir, 'cadyq', total, **overrides)], cwd=str(ref_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]

    opt_file = stage_options(ws, run_dir, 'cadyq', total, **overrides)
    cmd = [sys.executable, '-m', 'cadyq_plugin.cli', 'train', '-opt', opt_file, '--auto_resume']
    victim = subprocess.Popen(cmd, cwd=str(run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    states = os.path.join(run_dir, 'experiments', '*', 'training_states', '*.state')
    deadline = time.time() + 120
    while not glob.glob(states) and victim.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    killed_while_running = victim.poll() is None
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert killed_while_running, 'the run ended before it could be killed'
    exp = experiment(str(run_dir))
    assert not os.path.exists(os.path.join(exp, 'models', 'net_g_latest.pth'))
    for path in glob.glob(os.path.join(exp, '*', '*.pth')) + glob.glob(os.path.join(exp, '*', '*.state')):
        torch.load(path, map_location='cpu', weights_only=True)  # never a truncated file

    proc = run_cli(['train', '-opt', opt_file, '--auto_resume'], cwd=str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed_from = int(re.search(r'Resuming training from epoch: \d+, iter: (\d+)', proc.stderr).group(1))
    assert resumed_from >= 7 and experiment(str(run_dir)) == exp
    reference, resumed = logged_losses(experiment(str(ref_dir))), logged_losses(exp)
    assert max(resumed) == max(reference) == total
    assert_same_curves(reference, resumed, 1, total)
    bits = {float(v[0].split('avg_bit: ')[1]) for v in reference.values()}
    assert len(bits) > 1, 'the bit curve moves (the check covers the selectors)'
    assert_same_weights(load_params(os.path.join(exp, 'models', 'net_g_latest.pth')),
                        load_params(os.path.join(experiment(str(ref_dir)), 'models', 'net_g_latest.pth')))


def test_stage1_resumes_mid_epoch_exactly(ws, tmp_path):
    """Stage 1 (CADyQSRModel): stop after iteration 5 (last state at 3, in the middle of epoch 1), resume to
    10: the same curve and weights as 10 iterations in one go."""
    overrides = {'logger.save_checkpoint_freq': 3, 'val.val_freq': 4}
    ref_dir, run_dir = tmp_path / 'once', tmp_path / 'twice'
    proc = run_cli(['train', '-opt', stage_options(ws, ref_dir, 'fp', 10, **overrides)], cwd=str(ref_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for total in (5, 10):
        proc = run_cli(['train', '-opt', stage_options(ws, run_dir, 'fp', total, **overrides), '--auto_resume'],
                       cwd=str(run_dir))
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Resuming training from epoch: 1, iter: 3' in proc.stderr
    assert 'resume: epoch 1 continues after its first 1 batches' in proc.stderr
    reference, resumed = logged_losses(experiment(str(ref_dir))), logged_losses(experiment(str(run_dir)))
    assert_same_curves(reference, resumed, 1, 10)
    assert_same_weights(load_params(os.path.join(experiment(str(run_dir)), 'models', 'net_g_latest.pth')),
                        load_params(os.path.join(experiment(str(ref_dir)), 'models', 'net_g_latest.pth')))


# ============================================================================================ 4. NaN / Inf
def cadyq_model(tmp_path, max_bad_steps=10, calib_iters=5):
    net = {'type': 'EDSR_CADyQ', 'quant_mode': 'cadyq', 'upscale': 2, 'calib_iters': calib_iters,
           **SMALL_ARCHS['EDSR_CADyQ']}
    opt = {
        'name': 'unit', 'num_gpu': 0, 'is_train': True, 'dist': False, 'rank': 0, 'world_size': 1, 'scale': 2,
        'network_g': net, 'path': {'pretrain_network_g': None, 'models': str(tmp_path), 'training_states':
                                   str(tmp_path)},
        'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'optim_alpha': {'lr': 1e-2},
                  'optim_selector': {'type': 'Adam', 'lr': 1e-3},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5}, 'total_iter': 100,
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 255.0},
                  'bit_opt': {'type': 'BitLoss', 'loss_weight': 1e-4}, 'max_bad_steps': max_bad_steps},
        'val': {'metrics': {}},
    }
    torch.manual_seed(0)
    return CADyQModel(opt)


def snapshot(model):
    net = model.get_bare_model(model.net_g)
    return {k: v.clone() for k, v in net.state_dict().items()}


def batch(bad=None):
    torch.manual_seed(1)
    lq, gt = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16)
    if bad is not None:
        lq[0, 0, 0, 0] = bad
    return {'lq': lq, 'gt': gt}


class Records(logging.Handler):

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def basicsr_warnings():
    handler = Records()
    logging.getLogger('basicsr').addHandler(handler)
    yield handler.messages
    logging.getLogger('basicsr').removeHandler(handler)


def test_a_non_finite_step_is_skipped_and_undone_even_during_calibration(tmp_path, basicsr_warnings):
    model = cadyq_model(tmp_path)
    before = snapshot(model)
    model.feed_data(batch(bad=float('nan')))
    model.optimize_parameters(1)  # calibrating: the NaN batch would have written NaN ranges
    assert np.isnan(model.log_dict['l_pix'])
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before), 'weights, ranges and buffers unchanged'
    assert all(p.grad is None for p in model.net_g.parameters()), 'gradients cleared'
    # a fused optimizer (Adam on the CPU and CUDA) creates its state before it reads found_inf: that of no step
    assert all(not s or (float(s['step']) == 0 and not any(t.any() for k, t in s.items() if k != 'step'))
               for o in model.optimizers for s in o.state.values()), 'the optimizers took no step'
    assert model.step_guard.bad_steps == 1
    assert any('iter 1: non-finite loss or gradient (l_pix=nan' in m and 'step skipped' in m
               for m in basicsr_warnings)
    model.feed_data(batch())
    model.optimize_parameters(2)
    assert model.step_guard.bad_steps == 0
    assert not torch.equal(before['conv_first.weight'], snapshot(model)['conv_first.weight'])
    assert all(torch.isfinite(v).all() for v in snapshot(model).values())


def test_a_non_finite_gradient_with_a_finite_loss_is_skipped_too(tmp_path):
    model = cadyq_model(tmp_path, calib_iters=0)
    before = snapshot(model)
    handle = model.net_g.conv_last.weight.register_hook(lambda grad: grad * float('inf'))
    model.feed_data(batch())
    model.optimize_parameters(1)
    handle.remove()
    assert np.isfinite(model.log_dict['l_pix']) and model.step_guard.bad_steps == 1
    assert all(torch.equal(before[k], v) for k, v in snapshot(model).items())


def test_training_stops_after_max_bad_steps_in_a_row(tmp_path, basicsr_warnings):
    model = cadyq_model(tmp_path, max_bad_steps=3)
    before = snapshot(model)
    for it in (1, 2):
        model.feed_data(batch(bad=float('inf')))
        model.optimize_parameters(it)
    model.feed_data(batch())
    model.optimize_parameters(3)  # a good step resets the count
    good = snapshot(model)
    assert model.step_guard.bad_steps == 0
    for it in (4, 5):
        model.feed_data(batch(bad=float('nan')))
        model.optimize_parameters(it)
    model.feed_data(batch(bad=float('nan')))
    with pytest.raises(TrainingDivergedError, match='training stopped at iter 6: 3 consecutive steps'):
        model.optimize_parameters(6)
    assert all(torch.equal(good[k], v) for k, v in snapshot(model).items())
    assert any('training stopped at iter 6' in m and str(tmp_path) in m for m in basicsr_warnings)
    assert not all(torch.equal(before[k], good[k]) for k in before)


def test_stage1_stops_on_nan_keeping_the_last_good_checkpoint(ws, tmp_path):
    """Stage 1 through the real command with a NaN loss weight: every step is bad; the checkpoint saved at
    iteration 2 holds the pretrained weights (never a NaN state), training stops at iteration 3 with a clear
    message and no 'latest' checkpoint is written."""
    opt_file = stage_options(ws, tmp_path, 'fp', 10, **{'train.pixel_opt.loss_weight': float('nan'),
                                                         'train.max_bad_steps': 3})
    proc = run_cli(['train', '-opt', opt_file], cwd=str(tmp_path))
    assert proc.returncode == 1
    assert 'Traceback' not in proc.stderr
    assert 'TrainingDivergedError: training stopped at iter 3: 3 consecutive steps' in proc.stderr
    exp = experiment(str(tmp_path))
    assert sorted(os.listdir(os.path.join(exp, 'models'))) == ['net_g_2.pth']
    assert_same_weights(load_params(os.path.join(exp, 'models', 'net_g_2.pth')), load_params(ws['fp']))
    state = torch.load(os.path.join(exp, 'training_states', '2.state'), weights_only=True)
    assert state['cadyq']['bad_steps'] == 2
    log = open(glob.glob(os.path.join(exp, 'train_*.log'))[0]).read()
    assert log.count('step skipped') == 3 and 'training stopped at iter 3' in log


# ============================================================================================ 5. bad data
def dataset_opt(root, phase='train', **kwargs):
    opt = {'name': 'tiny', 'type': 'CADyQPairedImageDataset', 'dataroot_gt': os.path.join(root, 'HR'),
           'dataroot_lq': os.path.join(root, 'LR'), 'filename_tmpl': '{}', 'io_backend': {'type': 'disk'},
           'phase': phase, 'scale': 4}
    if phase == 'train':
        opt.update(gt_size=32, use_hflip=True, use_rot=True)
    opt.update(kwargs)
    return opt


@pytest.fixture
def pairs(tmp_path):
    return make_tiny_pairs(str(tmp_path / 'pairs'))


def index_of(dataset, name):
    return next(i for i, p in enumerate(dataset.paths) if os.path.basename(p['gt_path']) == f'{name}.png')


@pytest.mark.parametrize('content', [b'not a png at all', b''])
def test_a_corrupt_or_empty_image_names_the_dataset_and_key(pairs, content):
    with open(os.path.join(pairs, 'HR', 'coffee.png'), 'wb') as f:
        f.write(content)
    dataset = CADyQPairedImageDataset(dataset_opt(pairs))
    with pytest.raises(DataError, match=r"dataset 'tiny', gt key '.*coffee\.png': not a readable image"):
        dataset[index_of(dataset, 'coffee')]


def test_a_missing_file_is_named_when_the_dataset_is_built(pairs):
    os.remove(os.path.join(pairs, 'LR', 'coffee.png'))
    with pytest.raises(DataError, match=r"dataset 'tiny': cannot list the image pairs of dataroot_gt="):
        CADyQPairedImageDataset(dataset_opt(pairs))


def test_gt_lq_size_mismatch_and_too_small_images(pairs):
    cv2.imwrite(os.path.join(pairs, 'LR', 'coffee.png'), np.zeros((10, 12, 3), np.uint8))
    dataset = CADyQPairedImageDataset(dataset_opt(pairs))
    with pytest.raises(DataError, match=r"gt key '.*coffee\.png': GT is 48x48 but LQ is 10x12; at scale 4 GT "
                                        r'must be exactly 40x48'):
        dataset[index_of(dataset, 'coffee')]
    dataset = CADyQPairedImageDataset(dataset_opt(pairs, gt_size=64))
    with pytest.raises(DataError, match=r"smaller than the training patch gt_size=64"):
        dataset[index_of(dataset, 'rocket')]
    cv2.imwrite(os.path.join(pairs, 'LR', 'coffee.png'), np.zeros((14, 12, 3), np.uint8))
    val = CADyQPairedImageDataset(dataset_opt(pairs, phase='val'))
    with pytest.raises(DataError, match=r'GT is 48x48, smaller than LQ 14x12 times scale 4'):
        val[index_of(val, 'coffee')]


def test_lmdb_missing_key_and_corrupt_value(pairs, tmp_path):
    gt_db = make_lmdb(os.path.join(pairs, 'HR'), tmp_path / 'gt.lmdb')
    lq_db = make_lmdb(os.path.join(pairs, 'LR'), tmp_path / 'lq.lmdb')
    env = lmdb.open(str(gt_db), map_size=1 << 26)
    with env.begin(write=True) as txn:
        txn.delete(b'coffee')
        txn.put(b'rocket', b'\x89PNG garbage')
    env.close()
    opt = dataset_opt(pairs, dataroot_gt=str(gt_db), dataroot_lq=str(lq_db), io_backend={'type': 'lmdb'})
    dataset = CADyQPairedImageDataset(opt)
    keys = [p['gt_path'] for p in dataset.paths]
    with pytest.raises(DataError, match=r"dataset 'tiny', gt key 'coffee': missing from LMDB '.*gt\.lmdb'"):
        dataset[keys.index('coffee')]
    with pytest.raises(DataError, match=r"dataset 'tiny', gt key 'rocket': not a readable image \(12 bytes"):
        dataset[keys.index('rocket')]
    assert dataset[keys.index('astronaut')]['gt'].shape == (3, 32, 32)


def test_skip_replaces_a_bad_sample_and_gives_up_when_all_are_bad(pairs, basicsr_warnings):
    with open(os.path.join(pairs, 'HR', 'coffee.png'), 'wb') as f:
        f.write(b'corrupt')
    dataset = CADyQPairedImageDataset(dataset_opt(pairs, on_bad_sample='skip'))
    sample = dataset[index_of(dataset, 'coffee')]
    assert not sample['gt_path'].endswith('coffee.png')
    assert len(basicsr_warnings) == 1 and 'skipping a bad sample' in basicsr_warnings[0]
    for name in ('astronaut', 'chelsea', 'rocket'):
        with open(os.path.join(pairs, 'HR', f'{name}.png'), 'wb') as f:
            f.write(b'corrupt')
    with pytest.raises(DataError, match="dataset 'tiny': 4 samples in a row from index 0 are bad"):
        dataset[0]


@pytest.mark.parametrize('dataset_type', ['CADyQPairedImageDataset', 'PairedImageDataset'])
def test_sample_keys_make_the_augmentation_independent_of_the_global_generators(pairs, dataset_type):
    """Any dataset read through SeededDataset: a key's crop and flips depend on its seed only (not on the
    global generators, which it leaves as they were), also for BasicSR's own PairedImageDataset."""
    from basicsr.data import build_dataset
    dataset = SeededDataset(build_dataset(dataset_opt(pairs, type=dataset_type)))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    before = random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state()
    first = dataset[SampleKey(1, 1234)]
    after = random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state()
    assert before[:2] == after[:2] and torch.equal(before[2], after[2]), 'the global generators are left untouched'
    random.seed(99), np.random.seed(99)
    assert torch.equal(dataset[SampleKey(1, 1234)]['gt'], first['gt'])
    assert any(not torch.equal(dataset[SampleKey(1, seed)]['gt'], first['gt']) for seed in range(5))
    assert dataset.opt['type'] == dataset_type and len(dataset) == 4, 'the wrapped dataset shows through'


def test_bad_training_data_through_the_command(ws, tmp_path):
    """A corrupt training image read by a dataloader worker: exit status 1 and one line naming the dataset and
    the key, no traceback; with ``on_bad_sample: skip`` the same run trains to the end and logs the skip."""
    data = make_tiny_pairs(str(tmp_path / 'data'))
    with open(os.path.join(data, 'HR', 'chelsea.png'), 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n truncated')
    base = {'datasets.train.dataroot_gt': os.path.join(data, 'HR'), 'datasets.train.dataroot_lq':
            os.path.join(data, 'LR'), 'datasets.train.type': 'CADyQPairedImageDataset',
            'datasets.train.num_worker_per_gpu': 1}
    opt_file = stage_options(ws, tmp_path / 'raise', 'fp', 4, **base)
    proc = run_cli(['train', '-opt', opt_file], cwd=str(tmp_path / 'raise'))
    assert proc.returncode == 1
    assert 'Traceback' not in proc.stderr
    assert re.search(r"basicsr train: DataError: dataset 'DIV2K', gt key '.*chelsea\.png': not a readable image",
                     proc.stderr), proc.stderr[-2000:]
    opt_file = stage_options(ws, tmp_path / 'skip', 'fp', 4, **base, **{'datasets.train.on_bad_sample': 'skip'})
    proc = run_cli(['train', '-opt', opt_file], cwd=str(tmp_path / 'skip'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = open(glob.glob(os.path.join(experiment(str(tmp_path / 'skip')), 'train_*.log'))[0]).read()
    assert 'skipping a bad sample (on_bad_sample: skip)' in log and 'chelsea.png' in log
