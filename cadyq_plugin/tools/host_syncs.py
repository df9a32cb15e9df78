"""What makes the CPU wait for the GPU in a training step, counted: device values read on the host and copies
between host and device, over steps of tiny models of every stage.

A read (``.item()``, ``bool(t)``, ``.tolist()``: ``aten._local_scalar_dense`` of a device tensor) or a copy to
the host blocks the CPU until the GPU has finished everything queued before it, so the GPU idles while the CPU
then launches the next operations; a copy from pageable host memory blocks too. :class:`HostSyncCounter` is a
``TorchDispatchMode`` that records each of them with the line of the plugin (or BasicSR) that caused it. It
runs on PyTorch's fake CUDA tensors (the test suite, no GPU needed: ``stub_reads`` answers reads with zero, as
fake tensors hold no values) and on a real GPU (``basicsr gpu-check``).

:func:`stage_model` builds the model of one stage (``fp``: CADyQSRModel; ``pams`` and ``cadyq``: CADyQModel
with its teacher and distillation; ``budget``: cadyq trained to a target FAB) on a tiny EDSR_CADyQ, and
:func:`count_step_syncs` runs steps of it under the counter.
"""
import os
import traceback
from collections import Counter, namedtuple
from os import path as osp

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import TorchDispatchMode

STAGES = ('fp', 'pams', 'cadyq', 'budget')
TINY_NET = {'type': 'EDSR_CADyQ', 'num_feat': 8, 'num_block': 2, 'upscale': 2}

SyncEvent = namedtuple('SyncEvent', ['kind', 'op', 'where', 'non_blocking'])
SyncEvent.__doc__ = ('``kind``: ``read`` (a device value read on the host), ``to_host`` or ``to_device`` (a copy); '
                     '``where``: ``file:line`` of the innermost plugin or BasicSR frame.')

_aten = torch.ops.aten
_COPIES = (_aten._to_copy.default, _aten.copy_.default)
_OWN_FRAMES = (f'{os.sep}cadyq_plugin{os.sep}', f'{os.sep}basicsr{os.sep}')


class HostSyncCounter(TorchDispatchMode):
    """Records every host read of a device value and every copy between host and device (see the module doc).

    Args:
        stub_reads (bool): answer a read of a fake tensor with zero (``False``, ``0`` or ``0.0``): fake tensors
            hold no values. Zero is what the step's reads expect in a healthy run (no bad step, no stop).
    """

    def __init__(self, stub_reads=False):
        super().__init__()
        self.stub_reads = stub_reads
        self.events = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _aten._local_scalar_dense.default:
            if args[0].device.type != 'cpu':
                self.events.append(SyncEvent('read', 'item', _caller(), False))
            if self.stub_reads and isinstance(args[0], FakeTensor):
                dtype = args[0].dtype
                return False if dtype == torch.bool else (0.0 if dtype.is_floating_point else 0)
        elif func in _COPIES:
            if func is _aten.copy_.default:
                destination, source = args[0].device, args[1].device
                non_blocking = bool(args[2] if len(args) > 2 else kwargs.get('non_blocking', False))
            else:
                source = args[0].device
                destination = torch.device(kwargs.get('device') or source)
                non_blocking = bool(kwargs.get('non_blocking', False))
            if (source.type == 'cpu') != (destination.type == 'cpu'):
                kind = 'to_device' if source.type == 'cpu' else 'to_host'
                self.events.append(SyncEvent(kind, func.__name__, _caller(), non_blocking))
        return func(*args, **kwargs)

    def count(self, kind):
        return sum(event.kind == kind for event in self.events)

    def table(self):
        """Markdown rows ``| kind | where | count |`` of the recorded events, most frequent first."""
        counts = Counter((event.kind + (' (non_blocking)' if event.non_blocking else ''), event.where)
                         for event in self.events)
        return [f'| {kind} | `{where}` | {count} |' for (kind, where), count in counts.most_common()]


def _caller():
    for frame in reversed(traceback.extract_stack()[:-2]):
        if any(part in frame.filename for part in _OWN_FRAMES) and not frame.filename.endswith('host_syncs.py'):
            parts = frame.filename.split(os.sep)
            package = max(i for i, part in enumerate(parts) if part in ('cadyq_plugin', 'basicsr'))
            return f'{"/".join(parts[package:])}:{frame.lineno}'
    return '?'


# ------------------------------------------------------------------------------------------------ tiny stages
def stage_options(stage, workdir, network=TINY_NET, calib_iters=1, print_freq=1000):
    """In-process training options of ``stage`` (see the module doc) on ``network`` (a ``network_g`` section
    without ``quant_mode``; :data:`TINY_NET` by default); its teachers are saved in ``workdir`` (an FP network for
    pams, a PAMS one for cadyq)."""
    if stage not in STAGES:
        raise ValueError(f'stage must be one of {STAGES}, got {stage!r}')
    mode = 'cadyq' if stage == 'budget' else stage
    opt = {
        'name': f'host_syncs_{stage}', 'num_gpu': 0, 'is_train': True, 'dist': False, 'rank': 0, 'world_size': 1,
        'scale': network['upscale'], 'model_type': 'CADyQSRModel' if mode == 'fp' else 'CADyQModel',
        'network_g': dict(network, quant_mode=mode, calib_iters=calib_iters),
        'path': {'pretrain_network_g': None, 'models': workdir, 'training_states': workdir},
        'logger': {'print_freq': print_freq},
        'train': {'optim_g': {'type': 'Adam', 'lr': 1e-4}, 'optim_alpha': {'lr': 1e-2},
                  'optim_selector': {'type': 'Adam', 'lr': 1e-4},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [1000], 'gamma': 0.5}, 'total_iter': 1000,
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 255.0}},
        'val': {'metrics': {}},
    }
    if mode != 'fp':
        teacher_mode = 'fp' if mode == 'pams' else 'pams'
        opt['network_t'] = dict(network, quant_mode=teacher_mode)
        opt['path']['pretrain_network_t'] = _teacher(network, teacher_mode, workdir)
        opt['train']['kd_opt'] = {'type': 'ATLoss', 'loss_weight': 1e3, 'feature_weight': 0.1}
    if mode == 'cadyq':
        opt['train']['bit_opt'] = {'type': 'BitLoss', 'loss_weight': 1e-4, 'growth': 1e-6}
        if stage == 'budget':
            opt['train']['bit_opt']['target_fab'] = 6.0
    return opt


def _teacher(network, mode, workdir):
    from basicsr.archs import build_network
    path = osp.join(workdir, f'teacher_{network["type"]}_{mode}.pth')
    if not osp.exists(path):
        torch.manual_seed(0)
        torch.save({'params': build_network(dict(network, quant_mode=mode)).state_dict()}, path)
    return path


def stage_model(stage, workdir, network=TINY_NET, calib_iters=1, print_freq=1000):
    """The model of ``stage`` (:func:`stage_options`) on the CPU; :func:`move_model` puts it on a device."""
    import cadyq_plugin  # noqa: F401  (registration)
    from basicsr.models import build_model
    torch.manual_seed(0)
    return build_model(stage_options(stage, workdir, network, calib_iters, print_freq))


def move_model(model, device):
    """Put a training model's networks on ``device`` and remake its optimizers there (inside ``FakeTensorMode``,
    for a model built outside it, this gives a model on fake CUDA). Its schedulers are dropped: the steps run
    here keep the learning rate; a bit budget's price state moves with them."""
    model.device = device
    model.net_g.to(model.device)
    if getattr(model, 'net_t', None) is not None:
        model.net_t.to(model.device)
    model.optimizers, model.schedulers = [], []
    model.setup_optimizers()
    if getattr(model, 'bit_budget', None) is not None:
        model.prepare_price()  # the budget's price and costs follow the network
    return model


def training_batches(count, batch=2, lq_size=8, scale=TINY_NET['upscale'], seed=0, pinned=False):
    """``count`` random training batches on the CPU (``lq`` [batch, 3, lq_size, lq_size] and its ``gt``), in pinned
    memory if ``pinned`` (as the training loader gives them on CUDA runs; pinning needs CUDA)."""
    generator = torch.Generator().manual_seed(seed)
    batches = [{'lq': torch.rand(batch, 3, lq_size, lq_size, generator=generator),
                'gt': torch.rand(batch, 3, lq_size * scale, lq_size * scale, generator=generator)}
               for _ in range(count)]
    return [{key: value.pin_memory() for key, value in b.items()} for b in batches] if pinned else batches


def run_steps(model, batches, first_iter=1):
    """``feed_data`` and ``optimize_parameters`` on each batch, iterations ``first_iter``, ``first_iter + 1``, ..."""
    for current_iter, batch in enumerate(batches, start=first_iter):
        model.feed_data(batch)
        model.optimize_parameters(current_iter)


def count_step_syncs(model, batches, first_iter=1, stub_reads=False):
    """:func:`run_steps` under a :class:`HostSyncCounter`; return the counter."""
    counter = HostSyncCounter(stub_reads)
    with counter:
        run_steps(model, batches, first_iter)
    return counter
