"""The CUDA-only defects, each provoked without a GPU: resume on another GPU count, the int8 backend on a CUDA run,
more nccl processes than GPUs, ``basicsr infer`` on a device, the step guard's skip on the device, DataParallel
wrapping, and the numerics policy (TF32, cuDNN's algorithm search, deterministic algorithms).

Where the code asks CUDA something (is a GPU there, which one is current, its generator state), the answers are
patched in; the forward passes on fake CUDA are in ``test_cuda_fake.py``, the host syncs in ``test_host_syncs.py``.
"""
import logging
import os

import cv2
import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import cadyq_plugin  # noqa: F401  (compat shim before basicsr)
from basicsr.archs import build_network
from cadyq_plugin import determinism, distributed, resume
from cadyq_plugin.config_check import ConfigError, check_options
from cadyq_plugin.models.sr_model import keep_implementation, make_optimizer
from cadyq_plugin.models.step_guard import StepGuard, TrainingDivergedError
from cadyq_plugin.options import read_yml
from cadyq_plugin.tools import infer
from tiny_workspace import OPTIONS

STAGE3 = os.path.join(OPTIONS, 'train_edsrbaseline_cadyq.yml')
TEST = os.path.join(OPTIONS, 'test_edsrbaseline_cadyq_image.yml')


# ------------------------------------------------------------------------------------------------ 3. resume
@pytest.fixture
def cuda_rng(monkeypatch):
    """A process on GPU ``current`` of ``count`` (CUDA in use); records which generator states are set."""
    machine = {'count': 4, 'current': 1, 'set': []}

    def state_of(index):
        return torch.full((8,), index, dtype=torch.uint8)

    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'is_initialized', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: machine['count'])
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: machine['current'])
    monkeypatch.setattr(torch.cuda, 'get_rng_state', lambda device='cuda': state_of(machine['current']))
    monkeypatch.setattr(torch.cuda, 'set_rng_state', lambda state, device='cuda': machine['set'].append(state))
    for name in ('get_rng_state_all', 'set_rng_state_all'):
        monkeypatch.setattr(torch.cuda, name, lambda *args: pytest.fail(f'{name}: every visible GPU\'s generator'))
    machine['state_of'] = state_of
    return machine


def test_a_training_state_keeps_the_generator_of_the_process_gpu_only(cuda_rng):
    state = resume.capture_rng_state()
    assert torch.equal(state['cuda'], cuda_rng['state_of'](1))
    resume.restore_rng_state(state)
    assert len(cuda_rng['set']) == 1 and torch.equal(cuda_rng['set'][0], cuda_rng['state_of'](1))


def test_a_state_of_a_run_on_more_gpus_resumes_on_fewer(cuda_rng):
    """A state of an older version (every visible GPU's generator: 8 here) resumed on GPU 1 of 4 restores that
    GPU's entry only; on GPU 3 of a state that saw 1 GPU nothing is restored (it was an IndexError)."""
    state = resume.capture_rng_state()
    state['cuda'] = [cuda_rng['state_of'](index) for index in range(8)]
    resume.restore_rng_state(state)
    assert len(cuda_rng['set']) == 1 and torch.equal(cuda_rng['set'][0], cuda_rng['state_of'](1))
    cuda_rng['current'] = 3
    state['cuda'] = state['cuda'][:1]
    resume.restore_rng_state(state)
    assert len(cuda_rng['set']) == 1


# ------------------------------------------------------------------------------------------------ 4. int8 on CUDA
@pytest.mark.parametrize('path, phase', [(STAGE3, 'train'), (TEST, 'test')], ids=['train', 'test'])
def test_the_int8_backend_on_a_cuda_run_is_refused_by_the_options_check(path, phase, monkeypatch):
    opt = read_yml(path)
    opt['network_g']['backend'] = 'int8'
    check_options(opt, path, phase, check_files=False)  # this machine: no GPU
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    with pytest.raises(ConfigError) as info:
        check_options(opt, path, phase, check_files=False)
    assert info.value.problems == [
        "network_g.backend = 'int8': expected fake on a CUDA run (num_gpu is 'auto' and 2 GPUs are visible): the "
        'int8 backend runs on x86 CPUs only (oneDNN); use backend fake, or num_gpu: 0 to run on the CPU']
    opt['num_gpu'] = 0
    check_options(opt, path, phase, check_files=False)


# ------------------------------------------------------------------------------------------------ 5. ranks vs GPUs
def test_more_nccl_processes_than_gpus_is_an_error_naming_both_counts():
    with pytest.raises(distributed.LaunchError) as info:  # printed by basicsr without a traceback
        distributed.choose_gpu(0, 8, 4, 'nccl', 'pytorch')  # every rank of the node refuses, rank 0 too
    message = str(info.value)
    assert message.startswith('8 processes on this node but 4 visible GPUs')
    assert 'torchrun --nproc_per_node 4' in message and 'dist_params.backend: gloo' in message
    with pytest.raises(distributed.LaunchError, match=r'at least 3 \(local rank 2\) processes on this node but 2 visible GPUs'):
        distributed.choose_gpu(2, None, 2, 'nccl', 'slurm')


def test_gpus_per_process_otherwise():
    assert [distributed.choose_gpu(rank, 4, 4, 'nccl', 'pytorch') for rank in range(4)] == [0, 1, 2, 3]
    assert [distributed.choose_gpu(rank, 4, 2, 'gloo', 'pytorch') for rank in range(4)] == [0, 1, 0, 1]
    assert distributed.choose_gpu(5, 8, 1, 'nccl', 'slurm') == 0, 'Slurm binding one GPU to each task'


def test_init_dist_refuses_before_joining_the_group(monkeypatch):
    monkeypatch.setattr(torch.multiprocessing, 'get_start_method', lambda allow_none=False: 'spawn')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setattr(torch.cuda, 'set_device', lambda index: pytest.fail('set_device'))
    monkeypatch.setattr(torch.distributed, 'init_process_group', lambda *a, **k: pytest.fail('joined the group'))
    for key, value in {'RANK': '1', 'LOCAL_RANK': '1', 'LOCAL_WORLD_SIZE': '2', 'WORLD_SIZE': '2',
                       'MASTER_ADDR': 'localhost', 'MASTER_PORT': '29500'}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(distributed.LaunchError, match='2 processes on this node but 1 visible GPU:'):
        distributed.init_dist('pytorch')


# ------------------------------------------------------------------------------------------------ 6. basicsr infer
def test_infer_runs_the_network_and_the_images_on_the_chosen_device(tmp_path, monkeypatch):
    cv2.imwrite(str(tmp_path / 'a.png'), np.full((6, 5, 3), 128, np.uint8))
    seen = []

    def super_resolve(net, lq, patchwise=None, mac_counter=None):
        seen.append((next(net.parameters()).device, lq.device))
        from cadyq_plugin.inference import Inference
        return Inference(torch.zeros(1, 3, 12, 10), [{'layers': None, 'bits': torch.full((2,), 8.0)}],
                         [(0, 12, 0, 10)])

    monkeypatch.setattr('cadyq_plugin.inference.super_resolve', super_resolve)
    args = ['--arch', 'EDSR_CADyQ', '--scale', '2', '--model', str(tmp_path / 'net.pth'), '-i', str(tmp_path / 'a.png'),
            '-o', str(tmp_path / 'out')]
    monkeypatch.setattr(infer, 'build_loaded_network', lambda opt, path: build_network(
        {**opt, 'num_feat': 8, 'num_block': 1}))  # weights do not matter here
    assert infer.main(args + ['--device', 'meta']) == 0  # a non-CPU device without a GPU
    assert seen == [(torch.device('meta'), torch.device('meta'))]
    assert infer.main(args + ['--overwrite']) == 0  # default here: the CPU (no GPU)
    assert seen[-1] == (torch.device('cpu'), torch.device('cpu'))


def test_infer_device_choice(monkeypatch, capsys):
    assert infer.choose_device(None, 'fake') == torch.device('cpu')
    with pytest.raises(ValueError, match='--device cuda: no CUDA GPU is visible here'):
        infer.choose_device('cuda', 'fake')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
    assert infer.choose_device(None, 'fake') == torch.device('cuda', 0)
    assert infer.choose_device(None, 'int8') == torch.device('cpu')
    with pytest.raises(ValueError, match='--device cuda:1 with --backend int8: the int8 backend runs on x86 CPUs'):
        infer.choose_device('cuda:1', 'int8')
    with pytest.raises(ValueError, match="--device 'gpu0': not a device"):
        infer.choose_device('gpu0', 'fake')


# ------------------------------------------------------------------------------------------------ 7. the step guard
def test_fused_optimizers_on_cpu_and_cuda_unless_the_options_choose():
    param = torch.nn.Parameter(torch.zeros(2))
    cuda = torch.device('cuda', 0)
    assert make_optimizer('Adam', [{'params': [param]}], cuda).defaults['fused'] is True
    assert make_optimizer('AdamW', [{'params': [param]}], cuda).defaults['fused'] is True
    assert make_optimizer('SGD', [{'params': [param], 'lr': 0.1}], torch.device('cpu')).defaults['fused'] is True
    assert not make_optimizer('Adam', [{'params': [param], 'foreach': True}], cuda).defaults['fused']
    assert not make_optimizer('Adam', [{'params': [param]}], torch.device('mps')).defaults['fused']
    rmsprop = make_optimizer('RMSprop', [{'params': [param]}], cuda).defaults
    assert not rmsprop.get('fused') and rmsprop['foreach'] is True


def guarded_steps(grads, max_bad_steps, fused=True):
    """Steps of a fused Adam (on the CPU: the same found_inf mechanism as on CUDA) under a StepGuard whose host
    check is left for the end, as on a GPU between print iterations; returns (weights after each step, guard,
    optimizer)."""
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([param], lr=0.1, fused=fused)
    guard = StepGuard(max_bad_steps)
    weights = []
    for it, grad in enumerate(grads, start=1):
        optimizer.zero_grad(set_to_none=True)
        param.grad = torch.full((3,), grad)
        loss = torch.tensor(grad)
        ok = guard.decide([loss], [optimizer])
        guard.step([optimizer], ok)
        guard.record(ok, it, {'l_pix': loss})
        weights.append(param.detach().clone())
    return weights, guard, optimizer


def test_a_bad_step_is_skipped_on_the_device_exactly():
    """Fused Adam skips the update and its step count: the run with a NaN step in the middle ends with the
    weights and optimizer state of the run without it."""
    with_bad, _, opt_bad = guarded_steps([1.0, float('nan'), 2.0], max_bad_steps=5)
    without, _, opt_good = guarded_steps([1.0, 2.0], max_bad_steps=5)
    assert torch.equal(with_bad[1], with_bad[0]) and torch.equal(with_bad[-1], without[-1])
    state_bad, state_good = (next(iter(o.state.values())) for o in (opt_bad, opt_good))
    assert all(torch.equal(state_bad[k], state_good[k]) for k in state_good)


def test_after_max_bad_steps_every_step_is_skipped_until_the_check_stops_the_run(caplog):
    weights, guard, optimizer = guarded_steps([1.0, float('inf'), float('nan'), float('nan'), 2.0, 3.0],
                                              max_bad_steps=3)
    assert all(torch.equal(w, weights[0]) for w in weights[1:]), 'the latch keeps the last good weights'
    with pytest.raises(TrainingDivergedError, match=r'training stopped at iter 4: 3 consecutive steps .* \(found '
                       r'at iter 6; every step in between was skipped too\)'):
        guard.check(6, logging.getLogger('test'), [optimizer])


@pytest.mark.parametrize('saved_fused', [False, True], ids=['a state of a foreach run', 'a state of a fused run'])
def test_a_resumed_optimizer_keeps_this_runs_implementation(saved_fused):
    """A state saved by a non-fused run (the CPU, or before optimizers ran fused on CUDA) loaded into a fused
    optimizer (CUDA), and the other way round: the step keeps this run's implementation and the skip works."""
    def trained(fused):
        param = torch.nn.Parameter(torch.ones(3))
        optimizer = torch.optim.Adam([param], lr=0.1, fused=fused)
        param.grad = torch.ones(3)
        optimizer.step()
        return param, optimizer

    _, saved = trained(saved_fused)
    param, optimizer = trained(not saved_fused)
    optimizer.load_state_dict(saved.state_dict())
    keep_implementation(optimizer)
    assert optimizer.param_groups[0]['fused'] is (not saved_fused)
    before = param.detach().clone()
    StepGuard().step([optimizer], torch.tensor(False))  # a bad step: found_inf (fused) or not stepped
    assert torch.equal(param, before)
    StepGuard().step([optimizer], torch.tensor(True))
    assert not torch.equal(param, before) and int(optimizer.state[param]['step']) == 2


# ------------------------------------------------------------------------------------------------ DataParallel
def test_a_multi_gpu_run_without_a_launcher_gets_dataparallel_with_combined_calibration():
    net = build_network({'type': 'EDSR_CADyQ', 'num_feat': 8, 'num_block': 1, 'upscale': 2})
    with FakeTensorMode(allow_non_fake_inputs=True):
        wrapped = distributed.wrap_model(net, {'num_gpu': 2}, torch.device('cuda', 0))
    assert isinstance(wrapped, torch.nn.DataParallel) and wrapped.module is net
    hooks = list(wrapped._forward_hooks.values()) + list(net._forward_hooks.values())
    assert {getattr(hook, '__func__', None) for hook in hooks} == {distributed.ReplicaCalibration.combine,
                                                                    distributed.ReplicaCalibration.collect}


# ------------------------------------------------------------------------------------------------ 8. numerics policy
@pytest.fixture
def restore_flags():
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.conv.fp32_precision,
             torch.backends.cudnn.rnn.fp32_precision, torch.backends.cuda.matmul.fp32_precision,
             os.environ.get('CUBLAS_WORKSPACE_CONFIG'))
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
    torch.use_deterministic_algorithms(saved[2])
    torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.rnn.fp32_precision = saved[3:5]
    torch.backends.cuda.matmul.fp32_precision = saved[5]
    if saved[6] is None:
        os.environ.pop('CUBLAS_WORKSPACE_CONFIG', None)


def test_the_default_policy_is_full_fp32_with_the_algorithm_search(restore_flags):
    policy = determinism.apply_determinism(None)
    assert policy == {'tf32': False, 'cudnn_benchmark': True, 'deterministic_algorithms': False}
    assert torch.backends.cudnn.conv.fp32_precision == torch.backends.cuda.matmul.fp32_precision == 'ieee'
    assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    assert determinism.describe(policy).startswith(
        'determinism: tf32 false, cudnn_benchmark true, deterministic_algorithms false')


def test_deterministic_algorithms_switch_the_search_off(restore_flags, monkeypatch):
    monkeypatch.delenv('CUBLAS_WORKSPACE_CONFIG', raising=False)
    policy = determinism.apply_determinism({'deterministic_algorithms': True, 'tf32': True})
    assert policy == {'tf32': True, 'cudnn_benchmark': False, 'deterministic_algorithms': True}
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.conv.fp32_precision == 'tf32'
    assert os.environ['CUBLAS_WORKSPACE_CONFIG'] == ':4096:8'


def test_the_determinism_section_is_checked():
    opt = read_yml(STAGE3)
    opt['determinism'] = {'tf32': True, 'cudnn_benchmark': False, 'deterministic_algorithms': False}
    check_options(opt, STAGE3, check_files=False)
    opt['determinism'] = {'tf32': 'yes', 'deterministc_algorithms': True, 'cudnn_benchmark': True}
    with pytest.raises(ConfigError) as info:
        check_options(opt, STAGE3, check_files=False)
    assert info.value.problems == [
        "determinism.deterministc_algorithms = True: not a known key of this section (did you mean "
        "'deterministic_algorithms'?)", "determinism.tf32 = 'yes': expected true or false"]
    opt['determinism'] = {'deterministic_algorithms': True, 'cudnn_benchmark': True}
    with pytest.raises(ConfigError, match='determinism.cudnn_benchmark = True: expected false'):
        check_options(opt, STAGE3, check_files=False)
