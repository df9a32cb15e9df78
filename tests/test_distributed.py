"""Distributed CADyQ on PyTorch's own engine, on the CPU (gloo): unit checks of cadyq_plugin.distributed, and
2-process torchrun runs of the real ``basicsr`` command on tiny data (training with validation and checkpoints,
resume of an interrupted run, and 1- vs 2-process validation on an odd number of images)."""
import glob
import os
import re
import shutil
import subprocess
import sys

import cv2
import pytest
import torch
from tiny_workspace import OPTIONS, make_tiny_pairs, run_cli, tiny_stage_options

import cadyq_plugin  # noqa: F401  (compat shim before basicsr)
from basicsr.archs import build_network
from cadyq_plugin import _compat, distributed
from cadyq_plugin.models.stage_loading import load_stage_weights
from cadyq_plugin.quant import BitSelector, PAMSQuant, set_calibration
from cadyq_plugin.tools.derive_options import derive_options

SMALL_ARCHS = {
    'EDSR_CADyQ': dict(num_feat=16, num_block=2),
    'CARN_CADyQ': dict(num_feat=16, num_block=2, num_res_block=2),
    'IDN_CADyQ': dict(num_feat=32, d=8, s=4, num_block=2),
    'SRResNet_CADyQ': dict(num_feat=16, num_block=3),
}
TINY = {'network_g.num_feat': 16, 'network_g.num_block': 2}  # the tiny student (and teacher) of the CLI runs
VAL_NAMES = ('astronaut', 'coffee', 'chelsea')  # odd: 2 ranks get 2 and 1 images


# ------------------------------------------------------------------------------------------------ unit checks
@pytest.mark.parametrize('arch', sorted(SMALL_ARCHS))
@pytest.mark.parametrize('mode', ['fp', 'pams', 'cadyq'])
@pytest.mark.parametrize('calibrating', [False, True])
def test_every_parameter_gets_a_gradient_so_ddp_needs_no_unused_search(arch, mode, calibrating):
    """Why ``find_unused_parameters`` defaults to False: every trainable parameter gets a gradient in every
    mode, calibrating or not, even with the selectors choosing different candidates per sample."""
    torch.manual_seed(0)
    net = build_network({'type': arch, 'quant_mode': mode, 'upscale': 2, **SMALL_ARCHS[arch]}).train()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, BitSelector):
                m.fc.weight.normal_(0, 0.05)
                m.fc.bias.normal_(0, 0.5)
    set_calibration(net, calibrating)
    sr, aux = net(torch.rand(4, 3, 10, 12), return_aux=True)
    loss = sr.abs().mean() + aux['body'].square().mean() + sum(f.square().mean() for f in aux['feats'])
    (loss + aux['weighted_bits'].sum()).backward()
    missing = [name for name, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_backend_follows_dist_params_else_the_device():
    assert distributed.choose_backend(None, cuda=False) == 'gloo'
    assert distributed.choose_backend(None, cuda=True) == 'nccl'
    assert distributed.choose_backend('gloo', cuda=True) == 'gloo'
    with pytest.raises(ValueError, match='nccl'):
        distributed.choose_backend('nccl', cuda=False)
    assert not distributed.uses_cuda(0)


def test_dist_params_come_from_the_options_file_and_force_yml(tmp_path):
    opt = tmp_path / 'x.yml'
    opt.write_text('name: x\nnum_gpu: auto\ndist_params:\n  backend: gloo\n  port: 29500\n')
    params = distributed.dist_options_from_argv(['-opt', str(opt), '--launcher', 'pytorch'])
    assert params == {'backend': 'gloo', 'port': 29500, 'num_gpu': 'auto'}
    params = distributed.dist_options_from_argv(
        ['-opt', str(opt), '--force_yml', 'dist_params:port=1234', 'num_gpu=0', 'train:total_iter=3'])
    assert params == {'backend': 'gloo', 'port': 1234, 'num_gpu': 0}
    opt.write_text('name: x\nnum_gpu: 0\ndist_params:\n  bakend: gloo\n')
    with pytest.raises(ValueError, match='bakend'):
        distributed.dist_options_from_argv(['-opt', str(opt)])


@pytest.mark.parametrize('num_items,world_size', [(3, 2), (5, 4), (1, 2), (0, 2), (8, 2)])
def test_shards_are_disjoint_and_cover_every_image(num_items, world_size):
    shards = [distributed.shard_indices(num_items, rank, world_size) for rank in range(world_size)]
    assert sorted(i for shard in shards for i in shard) == list(range(num_items))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_basicsr_seeds_each_rank_with_seed_plus_rank(tmp_path, monkeypatch):
    from basicsr.utils import options
    opt = tmp_path / 'x.yml'
    opt.write_text('name: x\nnum_gpu: 0\nmanual_seed: 10\ndatasets: {}\npath: {}\n')
    monkeypatch.setattr(sys, 'argv', ['basicsr train', '-opt', str(opt)])
    monkeypatch.setattr(options, 'get_dist_info', lambda: (1, 2))
    parsed, _ = options.parse_options(str(tmp_path), is_train=True)
    assert (parsed['rank'], parsed['world_size'], torch.initial_seed()) == (1, 2, 11)


def test_resume_keeps_the_teacher_that_is_never_saved(tmp_path):
    models = tmp_path / 'models'
    models.mkdir()
    (models / 'net_g_2.pth').write_bytes(b'')
    opt = {'network_g': {}, 'network_t': {},
           'path': {'resume_state': 'x/2.state', 'models': str(models), 'pretrain_network_g': 'pams.pth',
                    'pretrain_network_t': 'teacher.pth'}}
    _compat._check_resume_keeping_unsaved(opt, 2)
    assert opt['path']['pretrain_network_g'] == str(models / 'net_g_2.pth')
    assert opt['path']['pretrain_network_t'] == 'teacher.pth'


# ------------------------------------------------------------------------------------------------ torchrun runs
def torchrun(args, cwd, nproc=2, timeout=300):
    """``torchrun --standalone --nproc_per_node N --no-python basicsr ARGS`` (a free port each time); falls back
    to ``-m cadyq_plugin.cli`` when the console script is not beside this interpreter."""
    script = os.path.join(os.path.dirname(sys.executable), 'basicsr')
    target = ['--no-python', script] if os.path.isfile(script) else ['-m', 'cadyq_plugin.cli']
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(nproc)] + target
    env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    proc = subprocess.run(cmd + list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    return output


def validation_blocks(output):
    """Every logged validation result, as the lines of its block (rank 0 logs them)."""
    return re.findall(r'Validation (\S+)\n((?:\t # .*\n)+)', output)


def metric_values(block):
    return dict(re.findall(r'# (\w+): ([-\d.]+)', block))


def save_net(net, path):
    torch.save({'params': net.state_dict()}, path)
    return str(path)


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    """Tiny data (4 copies of one training pair, 3 distinct validation pairs) and FP/PAMS checkpoints built
    directly (stages 1-2 in miniature: the PAMS model starts from the FP weights like stage 2 does)."""
    root = tmp_path_factory.mktemp('dist')
    train = make_tiny_pairs(str(root / 'train'), size=48, names=('astronaut',))
    for sub in ('HR', 'LR'):
        img = cv2.imread(os.path.join(train, sub, 'astronaut.png'))
        for k in range(1, 4):
            cv2.imwrite(os.path.join(train, sub, f'astronaut{k}.png'), img)
    val = make_tiny_pairs(str(root / 'val'), size=48, names=VAL_NAMES)
    torch.manual_seed(0)
    fp = build_network({'type': 'EDSR_CADyQ', 'quant_mode': 'fp', 'num_feat': 16, 'num_block': 2})
    pams = build_network({'type': 'EDSR_CADyQ', 'quant_mode': 'pams', 'num_feat': 16, 'num_block': 2})
    load_stage_weights(pams, fp.state_dict(), 'fp')
    return {'root': str(root), 'train': train, 'val': val, 'fp': save_net(fp, root / 'fp.pth'),
            'pams': save_net(pams, root / 'pams.pth')}


def cadyq_options(ws, name='dist_cadyq'):
    """Stage 3 of the reference options on the tiny data: 1 iteration per epoch (4 images, 2 per rank, 2 ranks),
    whole-image crops and no flips (so a resumed run must repeat an uninterrupted one exactly), the learning rate
    halving at iteration 3 and the bit-loss weight growing every iteration (both depend on the restored state)."""
    return tiny_stage_options(
        ws['root'], ws['train'], 'train_edsrbaseline', 'cadyq', total_iter=4, **{
            **TINY, 'network_t.num_feat': 16, 'network_t.num_block': 2, 'name': name,
            'path.pretrain_network_g': ws['pams'], 'path.pretrain_network_t': ws['pams'],
            'datasets.train.gt_size': 48, 'datasets.train.use_hflip': False, 'datasets.train.use_rot': False,
            'datasets.val.dataroot_gt': os.path.join(ws['val'], 'HR'),
            'datasets.val.dataroot_lq': os.path.join(ws['val'], 'LR'),
            'train.scheduler.milestones': [2], 'train.bit_opt.growth_every': 1, 'logger.use_tb_logger': False,
        })


@pytest.fixture(scope='module')
def cadyq_run(workspace):
    """One uninterrupted 2-process CADyQ run: 4 iterations, checkpoints and validation every 2."""
    opt = cadyq_options(workspace)
    output = torchrun(['train', '-opt', opt, '--launcher', 'pytorch'], cwd=workspace['root'])
    exp = os.path.join(workspace['root'], 'experiments', 'dist_cadyq')
    kept = os.path.join(workspace['root'], 'uninterrupted')
    shutil.copytree(exp, kept)
    return {'opt': opt, 'output': output, 'exp': exp, 'kept': kept}


def test_two_process_cadyq_training_validates_and_checkpoints(cadyq_run):
    output = cadyq_run['output']
    assert 'World size (gpu number): 2' in output
    assert 'DistributedDataParallel - EDSR_CADyQ' in output
    for it in (1, 2, 3, 4):
        assert re.search(rf'iter:\s+{it}, .*l_pix: .*l_kd: .*l_bit: .*avg_bit: ', output), it
    assert re.search(r'iter:\s+3, lr:\(5\.000e-05,5\.000e-03,\)', output), 'lr halves at iteration 3'
    assert 'parameters differ between ranks' not in output, 'calibrated ranges must stay in sync'
    blocks = validation_blocks(output)
    assert len(blocks) == 3 and all(set(metric_values(b)) == {'psnr', 'ssim', 'avg_bit', 'bitops'} for _, b in blocks)
    models = sorted(os.listdir(os.path.join(cadyq_run['exp'], 'models')))
    assert models == ['net_g_2.pth', 'net_g_4.pth', 'net_g_latest.pth']
    states = sorted(os.listdir(os.path.join(cadyq_run['exp'], 'training_states')))
    assert states == ['2.state', '4.state']
    saved = torch.load(os.path.join(cadyq_run['exp'], 'models', 'net_g_4.pth'), weights_only=True)['params']
    assert any('.fc.' in k for k in saved) and not any(k.startswith('module.') for k in saved)


def test_resume_of_an_interrupted_two_process_run_repeats_it_exactly(workspace, cadyq_run):
    """Interrupted after the checkpoint at iteration 2: ``--auto_resume`` restores weights, alphas, selectors,
    both optimizers, both schedulers and the iteration, so iterations 3-4 end where the uninterrupted run did."""
    exp, kept = cadyq_run['exp'], cadyq_run['kept']
    for path in ('models/net_g_4.pth', 'models/net_g_latest.pth', 'training_states/4.state'):
        os.remove(os.path.join(exp, path))
    output = torchrun(['train', '-opt', cadyq_run['opt'], '--launcher', 'pytorch', '--auto_resume'],
                      cwd=workspace['root'])
    assert 'Resuming training from epoch: 1, iter: 2.' in output
    assert 'net_g_2.pth' in output and 'a frozen network is never saved' in output
    assert not re.search(r'iter:\s+[12], ', output.split('Resuming training')[1])
    resumed = torch.load(os.path.join(exp, 'models', 'net_g_4.pth'), weights_only=True)['params']
    reference = torch.load(os.path.join(kept, 'models', 'net_g_4.pth'), weights_only=True)['params']
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    state = torch.load(os.path.join(exp, 'training_states', '4.state'), weights_only=True)
    ref_state = torch.load(os.path.join(kept, 'training_states', '4.state'), weights_only=True)
    assert state['iter'] == 4 and len(state['optimizers']) == 2 and len(state['schedulers']) == 2
    for opt_a, opt_b in zip(state['optimizers'], ref_state['optimizers']):
        for key, values in opt_b['state'].items():
            assert all(torch.equal(opt_a['state'][key][n], v) for n, v in values.items())
    assert [s['last_epoch'] for s in state['schedulers']] == [s['last_epoch'] for s in ref_state['schedulers']]
    # the validation after the resumed iteration 4 is the uninterrupted run's
    resumed_val, reference_val = validation_blocks(output)[0], validation_blocks(cadyq_run['output'])[1]
    assert metric_values(resumed_val[1]) == metric_values(reference_val[1])


def test_validation_on_two_processes_equals_one_process_on_an_odd_number_of_images(workspace, cadyq_run):
    """``basicsr test`` of the same checkpoint on 3 images: 1 process vs 2 (shards of 2 and 1 images): the same
    metrics and the same images; and both equal the training run's distributed validation at iteration 4."""
    root = workspace['root']
    outputs, images = {}, {}
    for nproc in (1, 2):
        derive_options(
            os.path.join(OPTIONS, 'test_cadyq_image.yml'), {
                'name': f'val_{nproc}proc', 'num_gpu': 0, **TINY,
                'datasets.test_2': None, 'datasets.test_3': None, 'datasets.test_4': None,
                'datasets.test_1.dataroot_gt': os.path.join(workspace['val'], 'HR'),
                'datasets.test_1.dataroot_lq': os.path.join(workspace['val'], 'LR'),
                'path.pretrain_network_g': os.path.join(cadyq_run['kept'], 'models', 'net_g_4.pth'),
            }, os.path.join(root, f'test_{nproc}proc.yml'))
        args = ['test', '-opt', os.path.join(root, f'test_{nproc}proc.yml')]
        if nproc == 1:
            proc = run_cli(args, cwd=root, extra_env={'CUDA_VISIBLE_DEVICES': ''})
            assert proc.returncode == 0, proc.stderr[-6000:]
            outputs[nproc] = proc.stdout + proc.stderr
        else:
            outputs[nproc] = torchrun(args + ['--launcher', 'pytorch'], cwd=root)
        pngs = sorted(glob.glob(os.path.join(root, 'results', f'val_{nproc}proc', 'visualization', 'Set5', '*.png')))
        images[nproc] = {os.path.basename(p).split('_val_')[0]: cv2.imread(p, cv2.IMREAD_UNCHANGED) for p in pngs}
    single, double = validation_blocks(outputs[1]), validation_blocks(outputs[2])
    assert len(single) == len(double) == 1
    assert single == double
    assert sorted(images[1]) == sorted(images[2]) == sorted(VAL_NAMES)
    assert all((images[1][name] == images[2][name]).all() for name in VAL_NAMES)
    trained = validation_blocks(cadyq_run['output'])[1][1]
    assert metric_values(trained) == metric_values(single[0][1])
