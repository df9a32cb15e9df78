"""Distributed CADyQ on PyTorch's own engine, on the CPU (gloo): unit checks of cadyq_plugin.distributed, and
2-process runs of the real ``basicsr`` command on tiny data: stage 3 through ``scripts/dist_train.sh`` (torchrun;
training with validation and checkpoints, resume of an interrupted run), 1- vs 2-process validation on an odd
number of images, and stage 1 (CADyQSRModel) through ``scripts/slurm_train.sh`` under a stand-in srun."""
import glob
import os
import re
import shutil
import socket
import subprocess
import sys

import cv2
import pytest
import torch
from tiny_workspace import OPTIONS, REPO, make_tiny_pairs, run_cli, tiny_stage_options

import cadyq_plugin  # noqa: F401  (compat shim before basicsr)
from basicsr.archs import build_network
from cadyq_plugin import distributed, resume
from cadyq_plugin.models import validation
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


def test_dist_params_come_from_the_options_file_and_force_yml(workspace, monkeypatch):
    """Both launchers get ``dist_params`` (with ``--force_yml`` applied) and ``num_gpu``, after the check."""
    from cadyq_plugin import options
    calls = []
    monkeypatch.setattr(distributed, 'init_dist', lambda launcher, **kwargs: calls.append((launcher, kwargs)))
    opt = cadyq_options(workspace, name='dist_params')
    options.parse_options('train', ['-opt', opt, '--launcher', 'pytorch'], workspace['root'])
    assert calls[-1] == ('pytorch', {'num_gpu': 0, 'port': 29500})
    options.parse_options('train', ['-opt', opt, '--launcher', 'slurm', '--force_yml', 'dist_params:port=1234',
                                    'dist_params:backend=gloo'], workspace['root'])
    assert calls[-1] == ('slurm', {'num_gpu': 0, 'port': 1234, 'backend': 'gloo'})
    with pytest.raises(options.ConfigError, match=r"dist_params has no key 'bakend'.*did you mean 'backend'"):
        options.parse_options('train', ['-opt', opt, '--force_yml', 'dist_params:bakend=gloo'], workspace['root'])
    typo = options.read_yml(opt)
    typo['dist_params'] = {'bakend': 'gloo'}
    with pytest.raises(options.ConfigError, match=r"dist_params.bakend = 'gloo': not a known key.*'backend'"):
        options.check_options(typo, opt)


def test_each_rank_is_seeded_with_seed_plus_rank(workspace, monkeypatch):
    from cadyq_plugin import options
    monkeypatch.setattr(distributed, 'init_dist', lambda launcher, **kwargs: None)
    monkeypatch.setattr(distributed, 'get_dist_info', lambda: (1, 2))
    opt = cadyq_options(workspace, name='seeded')
    parsed, _ = options.parse_options('train', ['-opt', opt, '--launcher', 'pytorch', '--force_yml',
                                                'manual_seed=10'], workspace['root'])
    assert (parsed['rank'], parsed['world_size'], torch.initial_seed()) == (1, 2, 11)


@pytest.mark.parametrize('num_items,world_size', [(3, 2), (5, 4), (1, 2), (0, 2), (8, 2)])
def test_shards_are_disjoint_and_cover_every_image(num_items, world_size):
    shards = [validation.shard_indices(num_items, rank, world_size) for rank in range(world_size)]
    assert sorted(i for shard in shards for i in shard) == list(range(num_items))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_resume_keeps_the_teacher_that_is_never_saved(tmp_path):
    for sub in ('models', 'training_states'):
        (tmp_path / sub).mkdir()
    (tmp_path / 'models' / 'net_g_2.pth').write_bytes(b'')
    torch.save({'iter': 2, 'epoch': 0, 'optimizers': [], 'schedulers': []}, tmp_path / 'training_states' / '2.state')
    opt = {'auto_resume': True, 'network_g': {}, 'network_t': {},
           'path': {'models': str(tmp_path / 'models'), 'training_states': str(tmp_path / 'training_states'),
                    'pretrain_network_g': 'pams.pth', 'pretrain_network_t': 'teacher.pth'}}
    assert resume.load_resume_state(opt)['iter'] == 2
    assert opt['path']['resume_state'] == str(tmp_path / 'training_states' / '2.state')
    assert opt['path']['pretrain_network_g'] == str(tmp_path / 'models' / 'net_g_2.pth')
    assert opt['path']['pretrain_network_t'] == 'teacher.pth'


def _collectives_worker(rank, store, results):
    """One of 2 gloo processes for :func:`test_collectives_on_two_processes`; writes its findings to results."""
    import json

    import torch.distributed as dist
    from basicsr.models.base_model import BaseModel
    torch.distributed.init_process_group('gloo', init_method=f'file://{store}', rank=rank, world_size=2)
    found = {}
    # loss terms and bit statistics are averaged over the ranks (BasicSR's reduce_loss_dict, to rank 0)
    model = BaseModel({'num_gpu': 0, 'is_train': True, 'dist': True, 'rank': rank, 'world_size': 2})
    logged = model.reduce_loss_dict({'l_pix': torch.tensor(1.0 + rank), 'avg_bit': torch.tensor(4.0 + 4 * rank)})
    found['logged'] = logged
    # rows of a sharded validation come back in dataset order (on rank 0, which finishes the validation)
    from mmengine.dist import collect_results
    found['rows'] = collect_results([f'img{i}' for i in validation.shard_indices(3, rank, 2)], 3, device='gpu')
    # calibration writes local ranges; the hook's averaging makes them equal again
    quant = PAMSQuant(8)
    quant.calibrating = True
    net = torch.nn.Sequential(quant).train()
    distributed.attach_calibration_sync(net)
    net(torch.full((1, 4), 2.0 + 2 * rank))
    found['alpha'] = [quant.alpha.item(), quant.max_val.item()]
    found['synced_after'] = distributed.unsynced_parameters(net)
    with torch.no_grad():
        quant.alpha.fill_(float(rank))
    found['drift'] = distributed.unsynced_parameters(net)
    # a training state keeps every rank's generators; on resume each rank continues its own sequence
    from cadyq_plugin import resume
    torch.manual_seed(100 + rank)
    states = resume.gather_rng_states()
    expected_next = torch.rand(3).tolist()
    torch.manual_seed(0)
    resume.restore_rng_state(resume.rng_state_for_rank({'rng': states[0], 'rng_per_rank': states}, rank))
    found['rng'] = [len(states), torch.rand(3).tolist() == expected_next]

    # an error on one rank of a distributed validation reaches every rank instead of leaving them waiting
    class Model:
        opt = {}
        net_g = torch.nn.Identity()

        def get_bare_model(self, net):
            return net

        def evaluate_images(self, samples, dataset_name, current_iter, save_img):
            if rank == 1:
                raise ValueError('broken image')
            return [{'name': str(i)} for i, _ in enumerate(samples)]

        def finish_validation(self, *args):
            raise AssertionError('must not be reached')

    class Data(torch.utils.data.Dataset):
        opt = {'name': 'tiny'}

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.zeros(1)

    try:
        validation.dist_validation(Model(), torch.utils.data.DataLoader(Data()), 1, None, False)
        found['error'] = None
    except RuntimeError as err:
        found['error'] = str(err)
    dist.destroy_process_group()
    with open(os.path.join(results, f'{rank}.json'), 'w') as f:
        json.dump(found, f)


def test_collectives_on_two_processes(tmp_path):
    import json
    torch.multiprocessing.spawn(_collectives_worker, args=(str(tmp_path / 'store'), str(tmp_path)), nprocs=2)
    found = [json.loads((tmp_path / f'{rank}.json').read_text()) for rank in range(2)]
    assert found[0]['logged'] == {'l_pix': 1.5, 'avg_bit': 6.0}
    assert found[0]['rows'] == ['img0', 'img1', 'img2'] and found[1]['rows'] is None
    assert found[0]['alpha'] == found[1]['alpha'] == [3.0, 3.0]
    assert found[0]['synced_after'] == found[1]['synced_after'] == []
    assert found[0]['drift'] == found[1]['drift'] == ['0.alpha']
    assert found[0]['rng'] == found[1]['rng'] == [2, True]
    assert all('rank 1: ValueError: broken image' in f['error'] for f in found)


# ------------------------------------------------------------------------------------------------ 2-process runs
BIN = os.path.dirname(sys.executable)  # where pip put the ``basicsr`` console script


def run_env(**extra):
    """This interpreter and its console scripts first on PATH; CPU only (gloo) even on a GPU machine."""
    return dict(os.environ, PATH=BIN + os.pathsep + os.environ.get('PATH', ''), PYTHON=sys.executable,
                OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='', **extra)


def check_run(cmd, cwd, env=None, timeout=300):
    proc = subprocess.run(cmd, cwd=cwd, env=env or run_env(), capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    return output


def torchrun(args, cwd, nproc=2):
    """``torchrun --standalone --nproc_per_node N --no-python basicsr ARGS`` (a free port each time)."""
    return check_run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(nproc),
                      '--no-python', os.path.join(BIN, 'basicsr')] + list(args), cwd)


def dist_train(opt, cwd, *args):
    """``scripts/dist_train.sh 2 OPT ARGS`` (single node: torchrun --standalone, --launcher pytorch)."""
    return check_run(['bash', os.path.join(REPO, 'scripts', 'dist_train.sh'), '2', opt] + list(args), cwd)


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


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
    output = dist_train(opt, workspace['root'])
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
    output = dist_train(cadyq_run['opt'], workspace['root'], '--auto_resume')
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
            os.path.join(OPTIONS, 'test_edsrbaseline_cadyq_image.yml'), {
                'name': f'val_{nproc}proc', 'num_gpu': 0, **TINY,
                'datasets': {'test_1': {
                    'name': 'Set5', 'type': 'PairedImageDataset', 'filename_tmpl': '{}', 'io_backend': {'type': 'disk'},
                    'dataroot_gt': os.path.join(workspace['val'], 'HR'),
                    'dataroot_lq': os.path.join(workspace['val'], 'LR')}},
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
    assert len(single) == len(double) == 1 and single[0][0] == double[0][0] == 'Set5'
    assert metric_values(single[0][1]) == metric_values(double[0][1])
    assert sorted(images[1]) == sorted(images[2]) == sorted(VAL_NAMES)
    assert all((images[1][name] == images[2][name]).all() for name in VAL_NAMES)
    trained = validation_blocks(cadyq_run['output'])[1][1]
    assert metric_values(trained) == metric_values(single[0][1])


FAKE_SRUN = """#!{python}
import os, subprocess, sys
args = sys.argv[1:]
options = []
while args and args[0].startswith('--'):
    options.append(args.pop(0))
with open(os.environ['FAKE_SRUN_LOG'], 'w') as f:
    f.write(' '.join(options))
ntasks = int([o for o in options if o.startswith('--ntasks=')][0].split('=')[1])
procs = [subprocess.Popen(args, env=dict(os.environ, SLURM_PROCID=str(r), SLURM_LOCALID=str(r),
                                         SLURM_NTASKS=str(ntasks), SLURM_NODELIST='localhost'))
         for r in range(ntasks)]
sys.exit(max(p.wait() for p in procs))
"""


def test_stage1_srmodel_under_slurm_launcher(workspace, tmp_path):
    """``scripts/slurm_train.sh`` with 2 CPU tasks: a stand-in ``srun`` starts them with Slurm's variables (and a
    stand-in ``scontrol`` names the master); stage 1 (CADyQSRModel) trains under DDP and validates sharded."""
    fake_bin = tmp_path / 'bin'
    fake_bin.mkdir()
    (fake_bin / 'srun').write_text(FAKE_SRUN.format(python=sys.executable))
    (fake_bin / 'scontrol').write_text('#!/bin/sh\necho 127.0.0.1\n')
    for tool in ('srun', 'scontrol'):
        os.chmod(fake_bin / tool, 0o755)
    opt = tiny_stage_options(
        str(tmp_path), workspace['train'], 'train_edsrbaseline', 'fp', total_iter=2, **{
            **TINY, 'name': 'slurm_fp', 'logger.use_tb_logger': False,
            'datasets.val.dataroot_gt': os.path.join(workspace['val'], 'HR'),
            'datasets.val.dataroot_lq': os.path.join(workspace['val'], 'LR'),
        })
    env = run_env(TASKS='2', GPUS_PER_NODE='0', FAKE_SRUN_LOG=str(tmp_path / 'srun.txt'))
    env['PATH'] = str(fake_bin) + os.pathsep + env['PATH']
    output = check_run(['bash', os.path.join(REPO, 'scripts', 'slurm_train.sh'), 'cpu', 'cadyq', opt,
                        '--force_yml', f'dist_params:port={free_port()}'], str(tmp_path), env)
    srun_options = (tmp_path / 'srun.txt').read_text().split()
    assert '--ntasks=2' in srun_options and not any(o.startswith('--gres') for o in srun_options)
    assert 'World size (gpu number): 2' in output and 'DistributedDataParallel - EDSR_CADyQ' in output
    assert re.search(r'iter:\s+2, .*l_pix: ', output)
    blocks = validation_blocks(output)
    assert len(blocks) == 2 and all(set(metric_values(b)) == {'psnr', 'ssim'} for _, b in blocks)
    assert os.path.isfile(tmp_path / 'experiments' / 'slurm_fp' / 'models' / 'net_g_latest.pth')


def test_leading_local_rank_of_the_old_launcher_moves_behind_the_command():
    from cadyq_plugin.cli import leading_local_rank_last
    assert leading_local_rank_last(['--local-rank=1', 'train', '-opt', 'x.yml']) == \
        ['train', '--local-rank=1', '-opt', 'x.yml']
    assert leading_local_rank_last(['--local_rank', '0', 'train', '-opt', 'x.yml']) == \
        ['train', '--local_rank', '0', '-opt', 'x.yml']
    assert leading_local_rank_last(['train', '-opt', 'x.yml']) == ['train', '-opt', 'x.yml']
