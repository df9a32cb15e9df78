"""CADyQModel: stage-to-stage loading, optimizer groups, calibration window, and the bit loss at work."""
import copy

import pytest
import torch

import cadyq_plugin  # noqa: F401
from cadyq_plugin.archs import EDSR_CADyQ
from cadyq_plugin.checkpoint import CheckpointError
from cadyq_plugin.models import CADyQModel
from cadyq_plugin.models.stage_loading import load_stage_weights
from cadyq_plugin.quant import BitSelector

SMALL = {'num_feat': 16, 'num_block': 2, 'upscale': 2, 'calib_iters': 0}


def model_opt(tmp_path, mode='cadyq', bit_weight=1e-4, teacher=None, selector_lr=1e-4):
    opt = {
        'name': 'unit', 'num_gpu': 0, 'is_train': True, 'dist': False, 'rank': 0, 'world_size': 1, 'scale': 2,
        'network_g': dict(SMALL, type='EDSR_CADyQ', quant_mode=mode),
        'path': {'pretrain_network_g': None, 'models': str(tmp_path), 'training_states': str(tmp_path)},
        'train': {
            'optim_g': {'type': 'Adam', 'lr': 1e-4},
            'optim_alpha': {'lr': 1e-2},
            'optim_selector': {'type': 'Adam', 'lr': selector_lr},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
            'total_iter': 100,
            'pixel_opt': {'type': 'L1Loss', 'loss_weight': 255.0},
        },
        'val': {'metrics': {}},
    }
    if bit_weight is not None and mode == 'cadyq':
        opt['train']['bit_opt'] = {'type': 'BitLoss', 'loss_weight': bit_weight, 'growth': 0.0}
    if teacher is not None:
        opt['network_t'] = dict(SMALL, type='EDSR_CADyQ', quant_mode=teacher[0])
        opt['path']['pretrain_network_t'] = teacher[1]
        opt['train']['kd_opt'] = {'type': 'ATLoss', 'loss_weight': 1e3, 'feature_weight': 0.1}
    return opt


def save_net(net, path):
    torch.save({'params': net.state_dict()}, path)
    return str(path)


def test_fp_pams_cadyq_loading_chain(tmp_path):
    torch.manual_seed(0)
    fp = EDSR_CADyQ(**{**SMALL, 'quant_mode': 'fp'})
    pams = EDSR_CADyQ(**{**SMALL, 'quant_mode': 'pams'})
    initial = load_stage_weights(pams, fp.state_dict(), 'fp')
    assert initial and all(k.endswith(('alpha', 'max_val')) for k in initial)
    assert torch.equal(pams.body[1].conv2.weight, fp.body[1].conv2.weight)
    with torch.no_grad():
        pams.body[0].quant_in.alpha.fill_(2.5)
        pams.body[1].quant_mid.alpha.fill_(0.75)
    cadyq = EDSR_CADyQ(**{**SMALL, 'quant_mode': 'cadyq'})
    initial = load_stage_weights(cadyq, pams.state_dict(), 'pams')
    assert initial and all('.fc.' in k for k in initial), 'only selector linears start fresh'
    assert [q.alpha.item() for q in cadyq.body[0].quant_in.quantizers] == [2.5, 2.5, 2.5]
    assert [q.alpha.item() for q in cadyq.body[1].quant_mid.quantizers] == [0.75, 0.75, 0.75]
    assert cadyq.body[0].quant_res.alpha.item() == pams.body[0].quant_res.alpha.item()


def test_loading_refuses_a_later_stage_or_another_shape():
    cadyq = EDSR_CADyQ(**{**SMALL, 'quant_mode': 'cadyq'})
    with pytest.raises(CheckpointError, match='unexpected key body.0.quant_in.fc.weight'):
        load_stage_weights(EDSR_CADyQ(**{**SMALL, 'quant_mode': 'pams'}), cadyq.state_dict(), 'cadyq ckpt')
    wider = EDSR_CADyQ(**{**SMALL, 'quant_mode': 'fp', 'num_feat': 8})
    with pytest.raises(CheckpointError, match='shape of conv_first.weight'):
        load_stage_weights(EDSR_CADyQ(**{**SMALL, 'quant_mode': 'fp'}), wider.state_dict(), 'narrow')


def test_optimizer_groups(tmp_path):
    model = CADyQModel(model_opt(tmp_path))
    weights, alphas, selectors = model.parameter_groups()
    net = model.net_g
    n_selectors = sum(isinstance(m, BitSelector) for m in net.modules())
    assert len(selectors) == 2 * n_selectors
    assert len(alphas) == n_selectors * 3 + 2  # three candidates per selector + one A8 per block
    assert len(weights) + len(alphas) + len(selectors) == len(list(net.parameters()))
    assert [g['lr'] for g in model.optimizer_g.param_groups] == [1e-4, 1e-2]
    assert model.optimizer_s.param_groups[0]['lr'] == 1e-4
    assert len(model.schedulers) == 2


def _batches(n, seed=0):
    import skimage.data
    from basicsr.utils.matlab_functions import imresize
    img = torch.from_numpy(skimage.data.astronaut()[100:300, 100:300].astype('float32') / 255.0)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(n):
        gts, lqs = [], []
        for _ in range(4):
            top, left = torch.randint(0, 200 - 32, (2,), generator=generator).tolist()
            gt = img[top:top + 32, left:left + 32].numpy()
            gts.append(torch.from_numpy(gt).permute(2, 0, 1))
            lqs.append(torch.from_numpy(imresize(gt, 0.5)).permute(2, 0, 1))
        yield {'lq': torch.stack(lqs).clamp(0, 1), 'gt': torch.stack(gts)}


def _train_avg_bit(tmp_path, bit_weight, iters=30):
    torch.manual_seed(0)
    model = CADyQModel(model_opt(tmp_path, bit_weight=bit_weight, selector_lr=5e-2))
    history = []
    for it, batch in enumerate(_batches(iters), start=1):
        model.feed_data(batch)
        model.optimize_parameters(it)
        history.append(model.log_dict['avg_bit'])
    return history


def test_large_bit_loss_lowers_the_average_bit(tmp_path):
    without = _train_avg_bit(tmp_path, 0.0)
    with_bit_loss = _train_avg_bit(tmp_path, 1.0)
    assert without[0] == 8.0 and with_bit_loss[0] == 8.0
    assert sum(with_bit_loss[-5:]) / 5 < 6.0
    assert sum(with_bit_loss[-5:]) / 5 < sum(without[-5:]) / 5 - 1.0


def test_calibration_window_follows_the_iteration(tmp_path):
    opt = model_opt(tmp_path)
    opt['network_g']['calib_iters'] = 2
    model = CADyQModel(opt)
    selector = model.net_g.body[0].quant_in
    batches = list(_batches(3))
    model.feed_data(batches[0])
    model.optimize_parameters(1)
    calibrated = selector.quantizers[0].max_val.item()
    assert calibrated != 1.0
    # alpha := max_val in the forward, then one Adam step (lr 1e-2) moves it by at most ~lr
    assert abs(selector.quantizers[0].alpha.item() - calibrated) <= 0.011
    model.feed_data(batches[1])
    model.optimize_parameters(3)  # past the window: alpha only moves by its optimizer step
    assert abs(selector.quantizers[0].alpha.item() - calibrated) < 0.05


def test_teacher_is_frozen_and_distils(tmp_path):
    torch.manual_seed(1)
    teacher_path = save_net(EDSR_CADyQ(**{**SMALL, 'quant_mode': 'pams'}), tmp_path / 'pams.pth')
    opt = model_opt(tmp_path, teacher=('pams', teacher_path))
    opt['path']['pretrain_network_g'] = teacher_path
    model = CADyQModel(opt)
    before = copy.deepcopy(model.net_t.state_dict())
    model.feed_data(next(_batches(1)))
    model.optimize_parameters(1)
    assert not model.net_t.training
    assert all(not p.requires_grad for p in model.net_t.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.net_t.state_dict().items())
    assert set(model.log_dict) == {'l_pix', 'l_kd', 'l_bit', 'avg_bit'}
    assert model.log_dict['l_kd'] >= 0


def test_teacher_must_match_the_student(tmp_path):
    opt = model_opt(tmp_path, teacher=('pams', 'unused.pth'))
    opt['network_t']['upscale'] = 4
    with pytest.raises(ValueError, match='network_t.upscale'):
        CADyQModel(opt)
