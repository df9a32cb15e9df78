"""Distributed training on PyTorch's own engine (``torch.distributed`` + DDP), CPU (gloo) or GPU (nccl).

Used by the plugin's pipelines (:mod:`cadyq_plugin.train`, :mod:`cadyq_plugin.test`) and models. Rank and world
size, collectives on Python objects and the rank-strided gather of results come from ``mmengine.dist``. Nothing
here assumes CUDA.

- **Launch** (:func:`init_dist`): ``--launcher pytorch`` reads torchrun's environment (``RANK``, ``LOCAL_RANK``,
  ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``; no ``--local-rank`` argument needed), ``--launcher slurm``
  reads srun's (``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS``, ``SLURM_NODELIST``; port from
  ``dist_params.port``, else ``MASTER_PORT``, else 29500). The backend is ``dist_params.backend`` when given,
  else ``nccl`` when the run uses CUDA and ``gloo`` otherwise; ``dist_params`` apply to both launchers.
- **DDP** (:func:`wrap_model`): only the student ``net_g`` is wrapped (the teacher stays a bare, frozen, eval-mode
  module); no ``device_ids`` on CPU. ``find_unused_parameters`` defaults to ``False``: in ``fp``, ``pams`` and
  ``cadyq`` modes, calibrating or not, every trainable parameter of every CADyQ arch receives a gradient on every
  iteration (a bit selector back-propagates the probability-weighted mixture of all its candidates, so every
  candidate range and the selector's linear layer get gradients even though the forward uses one candidate;
  ``tests/test_distributed.py`` checks this). Set the top-level option ``find_unused_parameters: true`` for a
  custom arch that skips parameters.
- **Calibration**: PAMS calibration (the first ``calib_iters`` iterations) writes each quantizer's ``alpha`` and
  ``max_val`` from the local batch inside the forward pass; DDP never re-synchronises parameters, so the ranks
  would drift apart. A forward hook on the student averages them over the ranks after every calibrating forward,
  which equals single-process calibration on the global batch (equal per-rank batches).
- **GPUs per process** (:func:`choose_gpu`): local rank *r* trains on GPU *r*. nccl needs a GPU per process, so
  more processes on a node than visible GPUs is an error naming both counts; with gloo they share GPUs. A Slurm
  task that sees exactly one GPU (``--gpus-per-task 1``, ``--gpu-bind``) uses it whatever its local rank.
- **DataParallel** (``basicsr train`` without a launcher and ``num_gpu`` > 1, e.g. ``auto`` on a multi-GPU node):
  replicas of every arch, ``CADyQWrapper`` included, run their own modules; in a calibrating forward every
  replica sets the ranges from its share of the batch, and a hook combines them after the forward into the mean
  weighted by the replicas' batch sizes (:class:`ReplicaCalibration`), which is the single-GPU statistic of the
  whole batch (``batch_max_abs`` is a mean over samples). torchrun (DDP) is faster: DataParallel copies the
  network to every GPU in every iteration and runs the replicas in threads of one process.
"""
import atexit
import datetime
import os
import subprocess

import torch
import torch.distributed as dist
from mmengine.dist import all_reduce, barrier, broadcast, get_dist_info, is_distributed
from torch.nn.parallel import DataParallel, DistributedDataParallel

from cadyq_plugin.errors import UserError

DIST_PARAM_KEYS = ('backend', 'port', 'timeout')
DIST_BACKENDS = ('gloo', 'nccl', 'mpi')  # what dist_params.backend may name (torch.distributed's backends)
OPTION_KEYS = {'': ('dist_params', 'find_unused_parameters'), 'dist_params': DIST_PARAM_KEYS}  # '': the top level

__all__ = ['DIST_PARAM_KEYS', 'LaunchError', 'barrier', 'choose_backend', 'choose_gpu', 'get_dist_info', 'init_dist',
           'is_distributed', 'uses_cuda', 'wrap_model']


class LaunchError(UserError, RuntimeError):
    """A launch that cannot work (environment, processes per GPU); the message says what to change."""


# --------------------------------------------------------------------------------------------- process group
def uses_cuda(num_gpu='auto'):
    """Whether a run with this ``num_gpu`` option puts its networks on CUDA (BasicSR: ``num_gpu != 0``)."""
    if not torch.cuda.is_available():
        return False
    return num_gpu in (None, 'auto') or int(num_gpu) != 0


def choose_backend(backend=None, cuda=False):
    """``backend`` when given, else ``nccl`` for CUDA runs and ``gloo`` for CPU runs."""
    if backend:
        if backend == 'nccl' and not cuda:
            raise ValueError('dist_params.backend is nccl but this run has no CUDA device (or num_gpu is 0); '
                             'use gloo (or leave dist_params.backend out)')
        return backend
    return 'nccl' if cuda else 'gloo'


def init_dist(launcher, backend=None, port=None, timeout=None, num_gpu='auto'):
    """Join the process group of ``launcher`` (``pytorch``: torchrun, ``slurm``: srun); return (rank, world).

    Args:
        backend (str | None): ``dist_params.backend``; None picks nccl on CUDA and gloo on CPU.
        port (int | None): ``dist_params.port``, the master port of slurm runs (torchrun chooses its own).
        timeout (float | None): seconds a collective may wait (torch's default when None).
        num_gpu (int | str): the options' ``num_gpu``; 0 keeps a CUDA machine's run on the CPU.
    """
    import torch.multiprocessing as mp
    if mp.get_start_method(allow_none=True) is None:
        mp.set_start_method('spawn')  # as basicsr: dataloader workers must not fork a CUDA context
    if launcher == 'pytorch':
        rank, local_rank, world_size = _pytorch_env()
    elif launcher == 'slurm':
        rank, local_rank, world_size = _slurm_env(port)
    else:
        raise ValueError(f'unknown launcher {launcher!r}: use pytorch (torchrun) or slurm (srun)')
    cuda = uses_cuda(num_gpu)
    backend = choose_backend(backend, cuda)
    if cuda:
        torch.cuda.set_device(choose_gpu(local_rank, _local_world_size(launcher), torch.cuda.device_count(),
                                         backend, launcher))
    kwargs = {} if timeout is None else {'timeout': datetime.timedelta(seconds=float(timeout))}
    dist.init_process_group(backend=backend, init_method='env://', rank=rank, world_size=world_size, **kwargs)
    atexit.register(destroy_process_group)
    return rank, world_size


def choose_gpu(local_rank, local_world_size, gpu_count, backend, launcher):
    """The GPU index of the process with ``local_rank`` among ``local_world_size`` processes on its node (None:
    unknown) that see ``gpu_count`` GPUs; raises before the process group is joined when nccl would get fewer
    GPUs than processes."""
    processes = max(local_world_size or 0, local_rank + 1)
    if processes <= gpu_count:
        return local_rank
    if launcher == 'slurm' and gpu_count == 1:
        return 0  # one GPU bound to each task (--gpus-per-task 1, --gpu-bind): every task sees its own as GPU 0
    if backend == 'nccl':
        visible = os.environ.get('CUDA_VISIBLE_DEVICES')
        counted = f'{processes}' if local_world_size else f'at least {processes} (local rank {local_rank})'
        raise LaunchError(
            f'{counted} processes on this node but {gpu_count} visible GPU{"s" if gpu_count != 1 else ""}'
            f'{f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""}: nccl needs one GPU per '
            f'process. Start at most {gpu_count} per node (torchrun --nproc_per_node {gpu_count}, srun '
            f'--ntasks-per-node {gpu_count}), or set dist_params.backend: gloo to let processes share GPUs')
    return local_rank % gpu_count  # gloo: processes share the GPUs


def _local_world_size(launcher):
    """Processes on this node, from the launcher's environment (None when it does not say)."""
    names = ('LOCAL_WORLD_SIZE',) if launcher == 'pytorch' else ('SLURM_NTASKS_PER_NODE',)
    for name in names:
        value = os.environ.get(name, '')
        if value.isdigit():
            return int(value)
    return None


def destroy_process_group():
    """Leave the process group (registered at exit: a gloo group left alive at shutdown can abort the process)."""
    if is_distributed():
        dist.destroy_process_group()


def _require_env(names, launcher):
    missing = [name for name in names if name not in os.environ]
    if missing:
        raise LaunchError(f'--launcher {launcher} needs the environment variables {", ".join(missing)}; start the '
                           f'run with {"torchrun" if launcher == "pytorch" else "srun"} (see scripts/)')


def _pytorch_env():
    _require_env(('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'), 'pytorch')
    rank, world_size = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
    local_rank = int(os.environ.get('LOCAL_RANK', rank % max(torch.cuda.device_count(), 1)))
    return rank, local_rank, world_size


def _slurm_env(port=None):
    _require_env(('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST'), 'slurm')
    rank, world_size = int(os.environ['SLURM_PROCID']), int(os.environ['SLURM_NTASKS'])
    local_rank = int(os.environ.get('SLURM_LOCALID', rank % max(torch.cuda.device_count(), 1)))
    if 'MASTER_ADDR' not in os.environ:
        node_list = os.environ['SLURM_NODELIST']
        os.environ['MASTER_ADDR'] = subprocess.getoutput(f'scontrol show hostname {node_list} | head -n1').strip()
    if port is not None:
        os.environ['MASTER_PORT'] = str(port)
    else:
        os.environ.setdefault('MASTER_PORT', '29500')  # torch.distributed's default port
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(local_rank))
    return rank, local_rank, world_size



# --------------------------------------------------------------------------------------------- DDP
def wrap_model(net, opt, device):
    """Move ``net`` to ``device`` and wrap it for the run: DDP when ``opt['dist']`` (CPU: no device ids;
    ``find_unused_parameters`` from the options, default False, see the module doc), DataParallel for a
    non-distributed multi-GPU run, the bare network otherwise."""
    net = net.to(device)
    if opt.get('dist'):
        device_ids = None
        if device.type == 'cuda':
            device_ids = [device.index if device.index is not None else torch.cuda.current_device()]
        ddp = DistributedDataParallel(
            net, device_ids=device_ids, find_unused_parameters=bool(opt.get('find_unused_parameters', False)))
        attach_calibration_sync(net)
        return ddp
    if device.type == 'cuda' and int(opt.get('num_gpu') or 0) > 1:
        parallel = DataParallel(net)
        ReplicaCalibration.attach(parallel)
        return parallel
    return net


def _calibrating_quantizers(net):
    from cadyq_plugin.quant import PAMSQuant
    return [m for m in net.modules() if isinstance(m, PAMSQuant) and m.calibrating]


def average_calibration(net):
    """Average every calibrating PAMS quantizer's ``alpha`` and ``max_val`` over the ranks (one all-reduce)."""
    quantizers = _calibrating_quantizers(net)
    if not quantizers or get_dist_info()[1] == 1:
        return
    with torch.no_grad():
        flat = torch.cat([torch.cat([q.alpha.detach().reshape(-1), q.max_val.reshape(-1)]) for q in quantizers])
        all_reduce(flat, op='mean')
        _write_ranges(quantizers, flat)


def _calibration_hook(module, inputs, output):
    if module.training:
        average_calibration(module)


def attach_calibration_sync(net):
    """Register (once) the forward hook that keeps calibrated ranges identical across ranks."""
    if not getattr(net, '_cadyq_calibration_sync', False):
        net.register_forward_hook(_calibration_hook)
        net._cadyq_calibration_sync = True


class ReplicaCalibration:
    """Combines the ranges that DataParallel replicas calibrate from their shares of the batch (see the module
    doc): a forward hook on the network (its replicas share it) collects each replica's ranges and batch size, and
    a forward hook on the DataParallel module, after the gather, writes their batch-weighted mean into the network.
    Without it only the first replica's ranges would remain (its tensors are the network's own)."""

    def __init__(self):
        self.collected = []  # (device index, batch size, ranges); appended from the replicas' threads

    @classmethod
    def attach(cls, parallel):
        combiner = cls()
        parallel.module.register_forward_hook(combiner.collect)
        parallel.register_forward_hook(combiner.combine)
        return combiner

    def collect(self, module, inputs, output):
        replica = module.__dict__.get('_is_replica', False)  # one GPU: DataParallel runs the network itself
        quantizers = _calibrating_quantizers(module) if replica and module.training else []
        if quantizers and inputs:
            ranges = torch.cat([torch.cat([q.alpha.detach().reshape(-1), q.max_val.reshape(-1)]) for q in quantizers])
            self.collected.append((ranges.device.index or 0, inputs[0].shape[0], ranges))

    def combine(self, parallel, inputs, output):
        collected, self.collected = sorted(self.collected, key=lambda item: item[0]), []
        quantizers = _calibrating_quantizers(parallel.module)
        if len(collected) < 2 or not quantizers:
            return
        device = quantizers[0].alpha.device
        total = sum(batch for _, batch, _ in collected)
        with torch.no_grad():
            flat = sum(ranges.to(device) * (batch / total) for _, batch, ranges in collected)
            _write_ranges(quantizers, flat)


def _write_ranges(quantizers, flat):
    """Copy ``flat`` (each quantizer's ``alpha`` then ``max_val``, in order) into the quantizers."""
    offset = 0
    for q in quantizers:
        n = q.alpha.numel()
        q.alpha.data.copy_(flat[offset:offset + n].view_as(q.alpha))
        q.max_val.copy_(flat[offset + n:offset + n + q.max_val.numel()].view_as(q.max_val))
        offset += n + q.max_val.numel()


def broadcast_buffers(net, src=0):
    """Give every rank ``src``'s buffers (BatchNorm statistics and the like), as DDP does before a forward."""
    if get_dist_info()[1] == 1:
        return
    with torch.no_grad():
        for buf in net.buffers():
            broadcast(buf, src)


def unsynced_parameters(net):
    """Names of parameters that differ between ranks (a fingerprint per tensor; [] outside a process group)."""
    named = list(net.named_parameters())
    if get_dist_info()[1] == 1 or not named:
        return []
    with torch.no_grad():
        fingerprint = torch.stack([torch.stack([p.double().sum(), p.double().square().sum()]) for _, p in named])
        high, low = fingerprint.clone(), fingerprint.clone()
        all_reduce(high, op='max')
        all_reduce(low, op='min')
        differ = (high != low).any(dim=1).tolist()
    return [name for (name, _), bad in zip(named, differ) if bad]
