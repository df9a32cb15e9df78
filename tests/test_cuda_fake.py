"""The CUDA path without a GPU: forward passes, losses, the budget and patch-wise inference on PyTorch's fake CUDA
tensors, DataParallel replicas on fake ``cuda:0`` / ``cuda:1``, and backward on the ``meta`` device.

``FakeTensorMode`` gives tensors that carry a device, shape and dtype but no values, and raises on an operation
that mixes devices, so every tensor made on the wrong device (a CPU constant, a record made on the CPU) fails
here as it would on a GPU. Networks are built on the CPU outside the mode and moved inside it (``cuda:0`` with an
explicit index). Backward does not run on fake CUDA (the autograd engine asks the CUDA runtime for a device
context, PyTorch issue 92627), so gradients are checked on ``meta``, where the same non-CPU code paths run.
"""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.parallel import comm, gather, replicate, scatter
from torch.utils._pytree import tree_leaves

import cadyq_plugin  # noqa: F401  (compat shim before basicsr)
from basicsr.archs import build_network
from cadyq_plugin.data.patches import iter_patch_batches
from cadyq_plugin.distributed import ReplicaCalibration
from cadyq_plugin.inference import super_resolve
from cadyq_plugin.losses.bit_loss import BitLoss
from cadyq_plugin.losses.distill_loss import ATLoss
from cadyq_plugin.metrics import MACCounter
from cadyq_plugin.budget.target import BitBudget
from cadyq_plugin.quant import BitSelector, PAMSQuant, set_calibration

CUDA0, CUDA1 = torch.device('cuda', 0), torch.device('cuda', 1)
BASICSR_CH = {'num_in_ch': 3, 'num_out_ch': 3}
ARCHS = {
    'EDSR_CADyQ': {'num_feat': 8, 'num_block': 2},
    'CARN_CADyQ': {'num_feat': 16, 'num_block': 2, 'num_res_block': 2},
    'IDN_CADyQ': {'num_feat': 32, 'd': 8, 's': 4, 'num_block': 2},
    'SRResNet_CADyQ': {'num_feat': 8, 'num_block': 2},
    'CADyQWrapper(EDSR)': {'backbone': {'type': 'EDSR', **BASICSR_CH, 'num_feat': 8, 'num_block': 2, 'upscale': 2}},
    'CADyQWrapper(RCAN)': {'backbone': {'type': 'RCAN', **BASICSR_CH, 'num_feat': 16, 'num_group': 1, 'num_block': 2,
                                        'upscale': 2}},
}
MODES = ('fp', 'pams', 'cadyq')
PHASES = ('train', 'calibrating', 'eval')


def build(arch, mode, seed=0):
    """A tiny x2 network of ``arch`` in ``mode`` on the CPU, selectors randomised so that samples choose
    different bits."""
    options = dict(ARCHS[arch], quant_mode=mode, type=arch.split('(')[0])
    if 'backbone' not in options:
        options['upscale'] = 2
    torch.manual_seed(seed)
    net = build_network(options)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, BitSelector):
                module.fc.weight.normal_(0, 0.05)
                module.fc.bias.normal_(0, 0.5)
    return net


def set_phase(net, phase):
    net.train(phase != 'eval')
    set_calibration(net, phase == 'calibrating')
    return net


def fake_cuda():
    return FakeTensorMode(allow_non_fake_inputs=True)


def devices_of(tree):
    return {leaf.device for leaf in tree_leaves(tree) if isinstance(leaf, torch.Tensor)}


# ------------------------------------------------------------------------------------------------ forward
@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('arch', sorted(ARCHS))
def test_every_output_of_every_phase_is_on_the_network_device(arch, mode):
    net = build(arch, mode)
    with fake_cuda():
        net.to(CUDA0)
        for phase in PHASES:
            sr, aux = set_phase(net, phase)(torch.rand(2, 3, 8, 8, device=CUDA0), return_aux=True)
            assert sr.shape == (2, 3, 16, 16)
            assert aux['bits'].shape == (2, net.n_selectors) and (net.n_selectors > 0) == (mode == 'cadyq')
            assert devices_of((sr, aux)) == {CUDA0}, (phase, {k: devices_of(v) for k, v in aux.items()})


def test_the_losses_and_the_budget_are_on_the_network_device():
    student, teacher = build('EDSR_CADyQ', 'cadyq'), build('EDSR_CADyQ', 'pams', seed=1)
    budgets = [BitBudget.of_network('fab', 6.0, student), _bitops_budget(student)]
    with fake_cuda():
        student.to(CUDA0).train()
        teacher.to(CUDA0).eval()
        lq = torch.rand(2, 3, 8, 8, device=CUDA0)
        _, aux = student(lq, return_aux=True)
        _, aux_t = teacher(lq, return_aux=True)
        losses = {'at': ATLoss()(aux['body'], aux_t['body'], aux['feats'], aux_t['feats']),
                  'bit': BitLoss()(aux['weighted_bits'], 5)}
        for budget in budgets:
            budget.to(CUDA0)
            controller = BitLoss(target_fab=6.0).controller
            losses[f'{budget.kind} mean bit'] = budget.mean_bit(aux['bits'])
            step = controller.update(losses[f'{budget.kind} mean bit'] - budget.target_bit)
            losses[f'{budget.kind} price step'] = step
            losses[f'{budget.kind} price'] = controller.price
            losses[f'{budget.kind} bias shifts'] = step * budget.candidate_costs(torch.tensor([4., 6., 8.]))
        assert {name: devices_of(value) for name, value in losses.items()} == {name: {CUDA0} for name in losses}


def _bitops_budget(net):
    """A BitOPs budget halfway between the network's extremes."""
    probe = BitBudget.of_network('fab', 6.0, net)
    low, high = BitBudget('bitops', 1.0, probe.layers, probe.bits, net.n_selectors).reachable()
    return BitBudget.of_network('bitops', (low + high) / 2, net)


@pytest.mark.parametrize('arch', ['EDSR_CADyQ', 'CADyQWrapper(RCAN)'])
def test_patchwise_inference_stays_on_the_device(arch):
    net = build(arch, 'cadyq').eval()
    counter = MACCounter(net)
    for _, _, batch in iter_patch_batches(torch.zeros(1, 3, 14, 11), 6, 4, 3):
        counter(*batch.shape[2:])  # MAC tables (shapes) are counted on a meta copy: before the fake mode
    with fake_cuda():
        net.to(CUDA0)
        result = super_resolve(net, torch.rand(1, 3, 14, 11, device=CUDA0), {'patch': 6, 'step': 4, 'batch': 3},
                               counter)
        assert result.output.device == CUDA0 and result.output.shape == (1, 3, 28, 22)
        assert len(result.forwards) == len(result.regions) == 6  # 3 x 2 patches, every one with its bits
        assert all(f['bits'].shape == (net.n_selectors,) for f in result.forwards)


# ------------------------------------------------------------------------------------------------ DataParallel
@pytest.fixture
def broadcast_on_fakes(monkeypatch):
    """``replicate`` copies parameters with NCCL-like broadcast kernels that need a GPU; this stand-in keeps its
    contract: the tensors themselves for the source device (so the first replica's in-place writes reach the
    network, as on GPUs), copies on every other device."""

    def broadcast_coalesced(tensors, devices, buffer_size=None):
        devices = [torch.device('cuda', d) if isinstance(d, int) else torch.device(d) for d in devices]
        return [list(tensors) if device == tensors[0].device else [t.to(device) for t in tensors]
                for device in devices]

    monkeypatch.setattr(comm, 'broadcast_coalesced', broadcast_coalesced)


class SequentialDataParallel(torch.nn.Module):
    """DataParallel's forward (scatter, replicate, apply, gather) with the replicas run one after the other in this
    thread: PyTorch's threads would leave the fake mode (it is thread-local) and need CUDA streams."""

    def __init__(self, module, devices):
        super().__init__()
        self.module, self.devices = module, devices

    def forward(self, *inputs, **kwargs):
        inputs, kwargs = scatter(inputs, self.devices), scatter(kwargs, self.devices)
        self.replicas = replicate(self.module, self.devices)
        outputs = [replica(*i, **k) for replica, i, k in zip(self.replicas, inputs, kwargs)]
        self.replica_outputs = outputs
        return gather(outputs, self.devices[0])


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('arch', ['EDSR_CADyQ', 'CARN_CADyQ', 'CADyQWrapper(EDSR)', 'CADyQWrapper(RCAN)'])
def test_dataparallel_replicas_run_on_their_own_gpu_and_gather_on_the_first(broadcast_on_fakes, arch, mode):
    net = build(arch, mode)
    with fake_cuda():
        parallel = SequentialDataParallel(net.to(CUDA0), [0, 1])
        ReplicaCalibration.attach(parallel)
        for phase in PHASES:
            set_phase(net, phase)
            sr, aux = parallel(torch.rand(4, 3, 8, 8, device=CUDA0), return_aux=True)
            for device, (replica_sr, replica_aux) in zip((CUDA0, CUDA1), parallel.replica_outputs):
                assert devices_of((replica_sr, replica_aux)) == {device}, phase
            assert devices_of((sr, aux)) == {CUDA0} and aux['bits'].shape == (4, net.n_selectors), phase
            assert all(q.alpha.device == CUDA0 for q in net.modules() if isinstance(q, PAMSQuant))
        if arch.startswith('CADyQWrapper'):
            states = {id(replica._replica_parts()[1]) for replica in parallel.replicas}
            assert len(states | {id(net.state)}) == 3, 'every replica has its own forward state'


@pytest.fixture
def broadcast_on_cpu(monkeypatch):
    """``replicate(..., detach=True)`` on the CPU: every 'device' gets clones, so a replica's tensors are its
    own and the numbers can be compared."""
    monkeypatch.setattr(comm, 'broadcast_coalesced',
                        lambda tensors, devices, buffer_size=None: [[t.clone() for t in tensors] for _ in devices])


@pytest.mark.parametrize('arch', ['EDSR_CADyQ', 'CADyQWrapper(EDSR)'])
def test_replicas_compute_with_their_own_parameters(broadcast_on_cpu, arch):
    """A replica's output is the network's on its share of the batch, and it changes when the replica's own
    weights change (the wrapper's hooks and backbone follow the replica, not the original)."""
    net = set_phase(build(arch, 'cadyq'), 'eval')
    lq = torch.rand(3, 3, 8, 8)
    replica = replicate(net, [0, 1], detach=True)[1]
    with torch.no_grad():
        assert torch.equal(replica(lq), net(lq))
        conv = next(name for name, p in net.named_parameters() if name.endswith('weight') and p.dim() == 4)
        owner, _, leaf = conv.rpartition('.')  # a replica holds its parameters as plain attributes
        getattr(replica.get_submodule(owner), leaf).mul_(0.5)
        assert not torch.equal(replica(lq), net(lq))


def test_calibration_ranges_combine_into_the_whole_batch_statistic(broadcast_on_cpu):
    """Replicas calibrating on shares of 3 and 1 samples: the network keeps their batch-weighted mean, which for
    the first selector (whose input does not depend on any range) is the single-GPU range of the whole batch."""
    torch.manual_seed(0)
    lq = torch.rand(4, 3, 8, 8)
    single = set_phase(build('EDSR_CADyQ', 'cadyq'), 'calibrating')
    single(lq)
    net = set_phase(build('EDSR_CADyQ', 'cadyq'), 'calibrating')
    parallel = torch.nn.Module()
    parallel.module = net
    combiner = ReplicaCalibration()
    net.register_forward_hook(combiner.collect)
    replicas = replicate(net, [0, 1], detach=True)
    for replica, share in zip(replicas, (lq[:3], lq[3:])):
        replica(share)
    shares = [replica.body[0].quant_in.quantizers[0].alpha.item() for replica in replicas]
    combiner.combine(parallel, (lq,), None)
    combined = net.body[0].quant_in.quantizers[0].alpha.item()
    assert combined == pytest.approx((3 * shares[0] + shares[1]) / 4, rel=1e-6)
    assert combined == pytest.approx(single.body[0].quant_in.quantizers[0].alpha.item(), rel=1e-5)
    assert shares[0] != pytest.approx(shares[1])


# ------------------------------------------------------------------------------------------------ backward
@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('arch', sorted(ARCHS))
def test_backward_on_a_non_cpu_device_reaches_every_parameter(arch, mode):
    net = build(arch, mode).to('meta')
    for phase in ('train', 'calibrating'):
        net.zero_grad(set_to_none=True)
        sr, aux = set_phase(net, phase)(torch.rand(2, 3, 8, 8, device='meta'), return_aux=True)
        loss = sr.abs().mean() + aux['body'].square().mean() + sum(f.square().mean() for f in aux['feats'])
        (loss + aux['weighted_bits'].sum()).backward()
        missing = [name for name, p in net.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, (phase, missing[:5])
        assert {p.grad.device.type for p in net.parameters()} == {'meta'}
