"""A steady-state training step makes the CPU wait for the GPU nowhere: counted on fake CUDA for every stage.

:class:`~cadyq_plugin.tools.host_syncs.HostSyncCounter` records every device value read on the host and every
copy between host and device. Three steps of each stage (the first one calibrating) run on fake ``cuda:0``
(``FakeTensorMode``): the only copies are the batches, to the device and ``non_blocking``; nothing is read.
Backward cannot run on fake CUDA (PyTorch issue 92627): there it is replaced by zero gradients, and the backward
pass itself is counted on the ``meta`` device. Also: the reads at print iterations, the logged losses, and the
agreement of the ranks on a stop signal, on CPU tensors over gloo.
"""
import logging

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import cadyq_plugin  # noqa: F401  (compat shim before basicsr)
from basicsr.archs import build_network
from cadyq_plugin import experiment
from cadyq_plugin.models import loss_log
from cadyq_plugin.models.loss_log import LossLog
from cadyq_plugin.quant import set_calibration
from cadyq_plugin.tools.host_syncs import (STAGES, TINY_NET, HostSyncCounter, count_step_syncs, move_model,
                                           stage_model, training_batches)

CUDA0 = torch.device('cuda', 0)


@pytest.fixture
def zero_grad_backward(monkeypatch):
    """``Tensor.backward`` replaced by zero gradients for the parameters given to ``use`` (see the module doc)."""
    params = []

    def backward(self, *args, **kwargs):
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)

    monkeypatch.setattr(torch.Tensor, 'backward', backward)
    return params.extend


def fake_cuda_model(stage, tmp_path, use_params, **options):
    model = stage_model(stage, str(tmp_path), **options)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    mode.__enter__()
    move_model(model, CUDA0)
    use_params([p for p in model.net_g.parameters() if p.requires_grad])
    return model, mode


@pytest.mark.parametrize('stage', STAGES)
def test_three_training_steps_copy_only_the_batches_and_read_nothing(stage, tmp_path, zero_grad_backward):
    batches = training_batches(3)
    model, mode = fake_cuda_model(stage, tmp_path, zero_grad_backward)
    try:
        counter = count_step_syncs(model, batches, stub_reads=True)  # iteration 1 calibrates (calib_iters 1)
    finally:
        mode.__exit__(None, None, None)
    report = '\n'.join(counter.table())
    assert counter.count('read') == 0 and counter.count('to_host') == 0, report
    copies = [event for event in counter.events if event.kind == 'to_device']
    assert len(copies) == 2 * len(batches) and all(event.non_blocking for event in copies), report
    assert {event.where.split(':')[0] for event in copies} == {'cadyq_plugin/models/sr_model.py'}


def test_a_print_iteration_reads_the_guard_once_and_the_log_once(tmp_path, zero_grad_backward):
    batches = training_batches(3)
    model, mode = fake_cuda_model('cadyq', tmp_path, zero_grad_backward, print_freq=3)
    try:
        per_step = [count_step_syncs(model, [batch], first_iter=it, stub_reads=True)
                    for it, batch in enumerate(batches, start=1)]
        with HostSyncCounter(stub_reads=True) as log_read:
            logged = model.get_current_log()
    finally:
        mode.__exit__(None, None, None)
    assert [step.count('to_host') for step in per_step] == [0, 0, 1]  # the step guard's counters, in one copy
    assert log_read.count('to_host') == 1 and log_read.count('read') == 0
    assert set(logged) == {'l_pix', 'l_kd', 'l_bit', 'avg_bit'}


@pytest.mark.parametrize('mode', ['pams', 'cadyq'])
def test_backward_reads_nothing_on_a_non_cpu_device(mode):
    """The quantizers' backward passes (the autograd functions of the quant core) on ``meta``."""
    torch.manual_seed(0)
    net = build_network(dict(TINY_NET, quant_mode=mode)).to('meta').train()
    for calibrating in (True, False):
        set_calibration(net, calibrating)
        sr, aux = net(torch.rand(2, 3, 8, 8, device='meta'), return_aux=True)
        loss = sr.abs().mean() + aux['weighted_bits'].sum() + sum(f.square().mean() for f in aux['feats'])
        with HostSyncCounter(stub_reads=True) as counter:
            loss.backward()
        assert counter.events == [], counter.table()


# ------------------------------------------------------------------------------------------------ the loss log
def test_the_log_is_the_mean_of_the_taken_steps_since_the_last_line():
    log = LossLog()
    ok, bad = torch.tensor(True), torch.tensor(False)
    log.add({'l_pix': torch.tensor(1.0), 'avg_bit': torch.tensor([6.0, 8.0])}, ok)
    log.add({'l_pix': torch.tensor(float('nan')), 'avg_bit': torch.tensor(4.0)}, bad)
    log.add({'l_pix': torch.tensor(3.0), 'avg_bit': torch.tensor(5.0)}, ok)
    state = log.state_dict()
    assert log.reduce() == {'l_pix': 2.0, 'avg_bit': 6.0}
    assert log.reduce() == {}, 'a new window starts after each line'
    resumed = LossLog()
    resumed.load_state_dict(state, 'cpu')
    assert resumed.reduce() == {'l_pix': 2.0, 'avg_bit': 6.0}
    log.add({'l_pix': torch.tensor(float('inf'))}, bad)
    assert str(log.reduce()['l_pix']) == 'nan', 'only skipped steps: nothing to average'


def test_the_log_is_averaged_over_the_ranks_in_one_collective(monkeypatch):
    """Another rank with twice this rank's losses: the line shows the mean over both."""
    calls = []

    def all_reduce(tensor, op='sum'):
        calls.append(op)
        n = tensor.numel() // 2
        tensor[:n] *= 3  # sums: this rank's + twice this rank's
        tensor[n:] *= 2  # counts: both ranks took the same steps

    monkeypatch.setattr(loss_log, 'all_reduce', all_reduce)
    log = LossLog()
    for value in (1.0, 2.0):
        log.add({'l_pix': torch.tensor(value), 'l_kd': torch.tensor(10 * value)}, torch.tensor(True))
    assert log.reduce() == {'l_pix': 2.25, 'l_kd': 22.5} and calls == ['sum']


# ------------------------------------------------------------------------------------------------ stop signals
def test_ranks_agree_on_a_stop_over_a_cpu_group_without_the_gpu(monkeypatch):
    """With nccl the agreement after every iteration runs on a gloo group of CPU tensors."""
    collectives, groups = [], []
    gloo = object()
    monkeypatch.setattr(experiment, 'get_dist_info', lambda: (0, 2))
    monkeypatch.setattr(torch.distributed, 'get_backend', lambda group=None: 'nccl')
    monkeypatch.setattr(torch.distributed, 'new_group', lambda backend=None: groups.append(backend) or gloo)
    monkeypatch.setattr(experiment, 'all_reduce', lambda flag, op, group: collectives.append(
        (flag.device.type, op, group is gloo, int(flag.item()))))
    with experiment.GracefulStop() as stop:
        assert not stop.requested()
        stop.signum = 15  # a SIGTERM arrives on this rank
        assert stop.requested()
    assert groups == ['gloo'] and collectives == [('cpu', 'max', True, 0), ('cpu', 'max', True, 15)]


def test_a_single_process_stops_at_once_without_a_collective(monkeypatch):
    monkeypatch.setattr(experiment, 'all_reduce', lambda *args, **kwargs: pytest.fail('no collective needed'))
    with experiment.GracefulStop() as stop:
        assert not stop.requested()
        stop.signum = 2
        assert stop.requested()


def test_warnings_of_a_print_interval_name_the_bad_iterations(caplog):
    """On a GPU the guard is read at print iterations: one warning covers the bad steps since the last read."""
    from cadyq_plugin.models.step_guard import StepGuard
    guard = StepGuard(max_bad_steps=5)
    for it, good in enumerate([True, False, True, False, False], start=11):
        guard.record(torch.tensor(good), it, {'l_pix': torch.tensor(1.0 if good else float('nan'))})
    with caplog.at_level(logging.WARNING):
        guard.check(15, logging.getLogger('test'))
    assert ('iters 12-15: 3 steps with a non-finite loss or gradient (last: l_pix=nan); steps skipped, weights '
            'unchanged (2/5 consecutive bad steps)') in caplog.text
