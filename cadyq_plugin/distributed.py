"""Distributed training and validation on PyTorch's own engine (``torch.distributed`` + DDP), CPU or GPU.

One implementation for every BasicSR model the plugin runs (BasicSR's ``SRModel`` in stage 1, ``CADyQModel`` in
stages 2-3); :mod:`cadyq_plugin._compat` routes basicsr 1.4.2's launcher, DDP wrapping and distributed validation
here. Nothing in this module assumes CUDA.

- **Launch** (:func:`init_dist`): ``--launcher pytorch`` reads torchrun's environment (``RANK``, ``LOCAL_RANK``,
  ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``; no ``--local-rank`` argument needed), ``--launcher slurm``
  reads srun's (``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS``, ``SLURM_NODELIST``; port from
  ``dist_params.port``, else ``MASTER_PORT``, else 29500). The backend is ``dist_params.backend`` when given,
  else ``nccl`` when the run uses CUDA and ``gloo`` otherwise. The options file's ``dist_params`` and ``num_gpu``
  are honoured for both launchers (BasicSR passes ``dist_params`` to slurm only).
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
- **Validation** (:func:`dist_validation`): each rank evaluates a disjoint strided share of the images on the bare
  network (never through the DDP wrapper, whose forward broadcasts buffers and would mis-pair the collectives of
  the other ranks), the per-image rows are gathered in dataset order and rank 0 averages, keeps the best-metric
  records and logs: the numbers are those of single-process validation, for any number of images.
"""
import argparse
import atexit
import datetime
import functools
import os
import subprocess

import torch
import torch.distributed as dist
from torch.nn.parallel import DataParallel, DistributedDataParallel

DIST_PARAM_KEYS = ('backend', 'port', 'timeout')


# --------------------------------------------------------------------------------------------- process group
def is_dist():
    return dist.is_available() and dist.is_initialized()


def get_dist_info():
    """``(rank, world_size)``; ``(0, 1)`` outside a process group."""
    if is_dist():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    kwargs = {} if timeout is None else {'timeout': datetime.timedelta(seconds=float(timeout))}
    dist.init_process_group(backend=backend, init_method='env://', rank=rank, world_size=world_size, **kwargs)
    atexit.register(destroy_process_group)
    return rank, world_size


def destroy_process_group():
    """Leave the process group (registered at exit: a gloo group left alive at shutdown can abort the process)."""
    if is_dist():
        dist.destroy_process_group()


def _require_env(names, launcher):
    missing = [name for name in names if name not in os.environ]
    if missing:
        raise RuntimeError(f'--launcher {launcher} needs the environment variables {", ".join(missing)}; start the '
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


def dist_options_from_argv(argv):
    """``dist_params`` (plus ``num_gpu``) of the options file named by ``-opt`` in a ``basicsr train|test``
    argument list, with ``--force_yml dist_params:...=`` / ``num_gpu=`` overrides applied.

    BasicSR initialises the process group before it applies ``--force_yml``, and passes ``dist_params`` to the
    slurm launcher only; reading them here gives both launchers the same options.
    """
    import yaml
    from basicsr.utils.options import _postprocess_yml_value, ordered_yaml
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-opt', type=str)
    parser.add_argument('--force_yml', nargs='+', default=None)
    args, _ = parser.parse_known_args(argv)
    if not args.opt:
        return {}
    with open(args.opt, mode='r') as f:
        opt = yaml.load(f, Loader=ordered_yaml()[0]) or {}
    params = dict(opt.get('dist_params') or {})
    params['num_gpu'] = opt.get('num_gpu', 'auto')
    for entry in args.force_yml or []:
        keys, value = (part.strip() for part in entry.split('=', 1))
        keys = keys.split(':')
        if keys[0] == 'dist_params' and len(keys) == 2:
            params[keys[1]] = _postprocess_yml_value(value)
        elif keys == ['num_gpu']:
            params['num_gpu'] = _postprocess_yml_value(value)
    unknown = sorted(set(params) - set(DIST_PARAM_KEYS) - {'num_gpu'})
    if unknown:
        raise ValueError(f'unknown dist_params {unknown}; known: {list(DIST_PARAM_KEYS)}')
    return params


def barrier():
    if is_dist():
        dist.barrier()


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
        return DataParallel(net)
    return net


def _calibrating_quantizers(net):
    from cadyq_plugin.quant import PAMSQuant
    return [m for m in net.modules() if isinstance(m, PAMSQuant) and m.calibrating]


def average_calibration(net):
    """Average every calibrating PAMS quantizer's ``alpha`` and ``max_val`` over the ranks (one all-reduce)."""
    quantizers = _calibrating_quantizers(net)
    if not quantizers or not is_dist() or dist.get_world_size() == 1:
        return
    with torch.no_grad():
        flat = torch.cat([torch.cat([q.alpha.detach().reshape(-1), q.max_val.reshape(-1)]) for q in quantizers])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        offset = 0
        for q in quantizers:
            n = q.alpha.numel()
            q.alpha.data.copy_(flat[offset:offset + n].view_as(q.alpha))
            q.max_val.copy_(flat[offset + n:offset + n + q.max_val.numel()].view_as(q.max_val))
            offset += n + q.max_val.numel()


def _calibration_hook(module, inputs, output):
    if module.training:
        average_calibration(module)


def attach_calibration_sync(net):
    """Register (once) the forward hook that keeps calibrated ranges identical across ranks."""
    if not getattr(net, '_cadyq_calibration_sync', False):
        net.register_forward_hook(_calibration_hook)
        net._cadyq_calibration_sync = True


def broadcast_buffers(net, src=0):
    """Give every rank ``src``'s buffers (BatchNorm statistics and the like), as DDP does before a forward."""
    if not is_dist():
        return
    with torch.no_grad():
        for buf in net.buffers():
            dist.broadcast(buf, src)


def unsynced_parameters(net):
    """Names of parameters that differ between ranks (a fingerprint per tensor; [] outside a process group)."""
    if not is_dist() or dist.get_world_size() == 1:
        return []
    named = list(net.named_parameters())
    if not named:
        return []
    with torch.no_grad():
        fingerprint = torch.stack([torch.stack([p.double().sum(), p.double().square().sum()]) for _, p in named])
        high, low = fingerprint.clone(), fingerprint.clone()
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        differ = (high != low).any(dim=1).tolist()
    return [name for (name, _), bad in zip(named, differ) if bad]


# --------------------------------------------------------------------------------------------- validation
def shard_indices(num_items, rank, world_size):
    """Rank ``rank``'s share of ``range(num_items)``: every ``world_size``-th item, disjoint, no padding."""
    return list(range(rank, num_items, world_size))


def shard_dataloader(dataloader, rank, world_size):
    """``(indices, loader)``: a batch-1 loader over this rank's share of ``dataloader.dataset``."""
    from torch.utils.data import DataLoader, Subset
    indices = shard_indices(len(dataloader.dataset), rank, world_size)
    loader = DataLoader(
        Subset(dataloader.dataset, indices),
        batch_size=1,
        shuffle=False,
        num_workers=getattr(dataloader, 'num_workers', 0),
        collate_fn=dataloader.collate_fn,
        pin_memory=getattr(dataloader, 'pin_memory', False))
    return indices, loader


def gather_indexed(items):
    """All-gather ``[(index, value), ...]`` from every rank; return all values sorted by index (every rank)."""
    if not is_dist():
        return [value for _, value in sorted(items, key=lambda item: item[0])]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    merged = [item for part in gathered for item in part]
    return [value for _, value in sorted(merged, key=lambda item: item[0])]


def _gather_errors(error):
    """All-gather each rank's error message (or None); every rank raises if any rank failed (no hang)."""
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, error)
    failed = [(rank, msg) for rank, msg in enumerate(gathered) if msg is not None]
    if failed:
        listing = '; '.join(f'rank {rank}: {msg}' for rank, msg in failed)
        raise RuntimeError(f'distributed validation failed on {len(failed)} rank(s): {listing}')


def dist_validation(model, dataloader, current_iter, tb_logger, save_img):
    """Sharded validation of a BasicSR model (see the module doc); rank 0 logs and keeps best-metric records.

    Uses ``model.evaluate_images(samples, dataset_name, current_iter, save_img) -> rows`` and
    ``model.finish_validation(dataset_name, rows, current_iter, tb_logger)`` when the model has them
    (CADyQModel), else the same two steps written after BasicSR's ``SRModel.nondist_validation``.
    """
    from basicsr.utils import get_root_logger

    from cadyq_plugin.models.validation import average_rows
    rank, world_size = get_dist_info()
    dataset_name = dataloader.dataset.opt['name']
    net = model.get_bare_model(model.net_g)
    broadcast_buffers(net)  # evaluate rank 0's model, the one it saves
    drifted = unsynced_parameters(net)
    if drifted and rank == 0:
        get_root_logger().warning(f'{len(drifted)} parameters differ between ranks (first: {drifted[:5]}); '
                                  'validating each rank\'s own copy')
    evaluate = getattr(model, 'evaluate_images', None) or functools.partial(sr_evaluate_images, model)
    finish = getattr(model, 'finish_validation', None) or functools.partial(average_rows, model)
    indices, loader = shard_dataloader(dataloader, rank, world_size)
    rows, error = [], None
    try:
        rows = evaluate(loader, dataset_name, current_iter, save_img)
    except Exception as err:  # reported on every rank below instead of leaving the others waiting
        error = f'{type(err).__name__}: {err}'
        if not is_dist():
            raise
    if is_dist():
        _gather_errors(error)
    rows = gather_indexed(list(zip(indices, rows)))
    if rank == 0:
        finish(dataset_name, rows, current_iter, tb_logger)


def sr_evaluate_images(model, samples, dataset_name, current_iter, save_img):
    """BasicSR ``SRModel.nondist_validation``'s per-image work (inference, optional image, metrics) as rows."""
    from os import path as osp

    from basicsr.metrics import calculate_metric
    from basicsr.utils import imwrite, tensor2img

    from cadyq_plugin.models.validation import visualization_path
    metrics_opt = model.opt['val'].get('metrics') or {}
    rows = []
    for val_data in samples:
        img_name = osp.splitext(osp.basename(val_data['lq_path'][0]))[0]
        model.feed_data(val_data)
        model.test()
        visuals = model.get_current_visuals()
        metric_data = {'img': tensor2img([visuals['result']])}
        if 'gt' in visuals:
            metric_data['img2'] = tensor2img([visuals['gt']])
            del model.gt
        del model.lq, model.output
        if save_img:
            imwrite(metric_data['img'], visualization_path(model.opt, dataset_name, img_name, current_iter))
        row = {'name': img_name}
        row.update({name: calculate_metric(metric_data, opt_) for name, opt_ in metrics_opt.items()})
        rows.append(row)
    return rows


def sr_test(model):
    """``SRModel.test`` on the bare network (or the EMA copy), never through a DDP/DataParallel wrapper."""
    ema = getattr(model, 'net_g_ema', None)
    net = ema if ema is not None else model.get_bare_model(model.net_g)
    was_training = net.training
    net.eval()
    with torch.no_grad():
        model.output = net(model.lq)
    if ema is None:
        net.train(was_training)

