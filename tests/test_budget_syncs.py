"""The budget step never makes the host wait for the device: counted with a dispatch recorder.

A host sync is an ``aten._local_scalar_dense`` (what ``.item()``, ``float()`` and ``bool()`` of a tensor dispatch, on
the CPU too) or a copy between the CPU and another device. The budget's step (measure the batch's mean bit, update
the price, log target / running value / price, shift the selectors' biases) is counted on the CPU with the real
model, and on fake ``cuda:0`` tensors for the copies (which on a CPU-only machine only a fake device can show).
"""
import pytest
import torch
from test_model import SMALL, _batches, model_opt
from torch.utils._python_dispatch import TorchDispatchMode

import cadyq_plugin  # noqa: F401  (compat shim before basicsr)
from cadyq_plugin.archs import EDSR_CADyQ, IDN_CADyQ
from cadyq_plugin.budget.controller import BudgetController
from cadyq_plugin.budget.target import BitBudget
from cadyq_plugin.models import CADyQModel

SCALAR_READS = {torch.ops.aten._local_scalar_dense.default}
COPIES = {torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default}
# a tensor made from Python numbers (torch.tensor(v, device=...)): an upload on a GPU
FROM_HOST = {torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default}


def _devices(value):
    if isinstance(value, torch.Tensor):
        return {value.device.type}
    if isinstance(value, (list, tuple)):
        return set().union(*(_devices(v) for v in value)) if value else set()
    if isinstance(value, dict):
        return _devices(list(value.values()))
    return set()


class SyncRecorder(TorchDispatchMode):
    """Records the operators that make the host wait or copy between the CPU and another device."""

    def __init__(self):
        super().__init__()
        self.scalar_reads, self.cross_copies, self.from_host, self.ops = [], [], [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops += 1
        if func in SCALAR_READS:
            self.scalar_reads.append(func)
        elif func in FROM_HOST:
            self.from_host.append(func)
        elif func in COPIES:
            devices = _devices(args) | _devices(kwargs) | _devices(out)
            if 'cpu' in devices and len(devices) > 1:
                self.cross_copies.append((func, sorted(devices)))
        return out


def test_the_recorder_sees_what_it_must_count():
    """The expectation the budget is held to: ``.item()`` and ``torch.tensor(v)`` are seen on the CPU."""
    with SyncRecorder() as recorder:
        x = torch.ones(3)
        x.sum().item()
        torch.tensor(2.0)
    assert len(recorder.scalar_reads) == 1 and len(recorder.from_host) == 1


@pytest.mark.parametrize('kind', ['fab', 'bitops'])
def test_budget_steps_read_no_scalar_and_upload_nothing(tmp_path, kind):
    """Ten budget steps of the real model (measure, price update, logging values, bias shift): no ``.item()`` and
    no tensor made from Python numbers; the logged values stay tensors."""
    torch.manual_seed(0)
    opt = model_opt(tmp_path)
    if kind == 'fab':
        opt['train']['bit_opt'] = {'type': 'BitLoss', 'target_fab': 6.0}
    else:  # a BitOPs budget weighs the selectors: their weights must already be where the bits are
        opt['network_g'] = {'type': 'IDN_CADyQ', 'quant_mode': 'cadyq', 'num_feat': 32, 'd': 8, 's': 4,
                            'num_block': 2, 'upscale': 2, 'calib_iters': 0}
        opt['train']['bit_opt'] = {'type': 'BitLoss', 'target_bitops': 7.7}
    model = CADyQModel(opt)
    batch = next(_batches(1))
    model.feed_data(batch)
    with torch.no_grad():
        _, aux = model.net_g(model.lq, return_aux=True)
    bits = [aux['bits'] * 0 + b for b in (8.0, 7.0, 4.0, 5.0, 6.0, 8.0, 4.0, 6.5, 5.5, 6.0)]
    with SyncRecorder() as recorder:
        for step_bits in bits:
            loss_dict = {}
            model._steer_budget({**aux, 'bits': step_bits}, loss_dict)
            model._apply_price()
    assert recorder.ops > 0
    assert recorder.scalar_reads == [] and recorder.from_host == [] and recorder.cross_copies == []
    assert all(isinstance(v, torch.Tensor) for v in loss_dict.values()), loss_dict
    assert model.cri_bit.controller.steps == len(bits)


def test_on_a_gpu_the_budget_state_stays_on_the_device():
    """On fake ``cuda:0`` tensors: the budget's selector weights move to the device once; measuring, the price
    update, the user's unit and the bias shift then copy nothing between the host and the device."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    with torch.device('meta'):
        nets = {'fab': EDSR_CADyQ(**{**SMALL, 'quant_mode': 'cadyq'}),
                'bitops': IDN_CADyQ(num_feat=32, d=8, s=4, num_block=2, upscale=2, quant_mode='cadyq')}
    budgets = {'fab': BitBudget.of_network('fab', 6.0, nets['fab']),
               'bitops': BitBudget.of_network('bitops', 7.7, nets['bitops'])}
    with FakeTensorMode(allow_non_fake_inputs=True):
        device = torch.device('cuda:0')
        for kind, budget in budgets.items():
            budget.to(device)
            n = nets[kind].n_selectors
            costs = budget.candidate_costs(torch.tensor([4.0, 6.0, 8.0], device=device))
            biases = [torch.zeros(3, device=device) for _ in range(n)]
            controller = BudgetController(0.05, 0.02, 0.5)
            bits = torch.full((4, n), 8.0, device=device)
            with SyncRecorder() as recorder:
                for _ in range(3):
                    measured = budget.mean_bit(bits)
                    step = controller.update(measured - budget.target_bit)
                    running = budget.to_user(controller.running + budget.target_bit)
                    torch._foreach_sub_(biases, list((step * costs).unbind(0)))
            assert recorder.ops > 0
            assert recorder.cross_copies == [] and recorder.scalar_reads == [], kind
            assert {t.device for t in [measured, step, running, controller.price, *biases]} == {device}
