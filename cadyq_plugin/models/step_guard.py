"""Skipping training steps whose loss or gradients are not finite, and stopping after too many in a row.

A NaN or Inf in one step must not reach the weights (Adam would spread it to every parameter it touches), nor
the buffers a forward pass updates (PAMS calibration ranges, BatchNorm statistics). The guard:

1. snapshots the tensors a forward pass may change in place (:func:`mutable_state`: buffers and PAMS ``alpha``);
2. after ``backward``, checks the loss and every gradient (:meth:`StepGuard.finite`); in distributed runs every
   rank takes the same decision (one all-reduce of a flag);
3. on a bad step: no optimizer step, gradients cleared, snapshot restored, a warning; after ``max_bad_steps``
   consecutive bad steps :class:`TrainingDivergedError` stops the run. Weights never become non-finite, so any
   checkpoint saved meanwhile holds the last good weights, and nothing is saved after the stop.

The count of consecutive bad steps is part of the training state (``CADyQSRModel.save_training_state``).
"""
import math

import torch
from mmengine.dist import all_reduce

DEFAULT_MAX_BAD_STEPS = 10


class TrainingDivergedError(RuntimeError):
    """Training stopped after ``max_bad_steps`` consecutive non-finite steps."""


def mutable_state(net):
    """Tensors a forward pass may change in place: persistent buffers (BatchNorm statistics, ...) and, while
    calibrating, the PAMS ranges (``alpha`` and ``max_val``, written from the batch). Outside calibration a PAMS
    range changes only by the optimizer step, which a bad step skips."""
    from cadyq_plugin.quant import PAMSQuant
    tensors = []
    for module in net.modules():
        if isinstance(module, PAMSQuant):
            if module.calibrating:
                tensors += [module.alpha, module.max_val]
            continue
        skip = getattr(module, '_non_persistent_buffers_set', set())
        tensors += [buf for name, buf in module.named_buffers(recurse=False) if name not in skip]
    return tensors


def _grads(optimizers):
    return [p.grad for opt in optimizers for group in opt.param_groups for p in group['params'] if p.grad is not None]


def _all_finite(tensors):
    """One boolean tensor: every element of every tensor is finite."""
    tensors = [t.detach() for t in tensors if t is not None and t.numel()]
    if not tensors:
        return torch.tensor(True)
    foreach_norm = getattr(torch, '_foreach_norm', None)
    norms = foreach_norm(tensors) if foreach_norm is not None else [t.float().norm() for t in tensors]
    # the norm of a tensor is finite iff all its elements are (a huge but finite gradient whose norm
    # overflows counts as bad too: Adam would turn it into garbage anyway)
    return torch.isfinite(torch.stack([n.float().to(tensors[0].device) for n in norms])).all()


def _agree_across_ranks(ok):
    """In a distributed run a step is good only if it is good on every rank."""
    flag = ok.to(torch.float32).reshape(1)
    all_reduce(flag, op='min')  # a no-op outside a process group; on the group's device (nccl: CUDA)
    return bool(flag.item() > 0)


class StepGuard:
    """Decides whether an optimizer step may be taken; counts consecutive bad steps.

    Args:
        max_bad_steps (int): consecutive bad steps after which training stops.
    """

    def __init__(self, max_bad_steps=DEFAULT_MAX_BAD_STEPS):
        self.max_bad_steps = int(max_bad_steps)
        self.bad_steps = 0
        self._snapshot = None

    def snapshot(self, net):
        """Copy what the coming forward pass may change in place (cheap: buffers and scalar ranges)."""
        self._snapshot = [(t, t.detach().clone()) for t in mutable_state(net)]

    def finite(self, tensors, optimizers):
        """True when ``tensors`` (losses, outputs) and all gradients of ``optimizers`` are finite on all ranks."""
        ok = _all_finite(list(tensors)) & _all_finite(_grads(optimizers)).to(_device(tensors))
        return _agree_across_ranks(ok)

    def good_step(self):
        self.bad_steps = 0
        self._snapshot = None

    def bad_step(self, optimizers, current_iter, log_dict, logger, where=None):
        """Undo a bad step: clear gradients, restore the snapshot, warn; raise after ``max_bad_steps`` in a row."""
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        if self._snapshot is not None:
            with torch.no_grad():
                for tensor, saved in self._snapshot:
                    tensor.copy_(saved)
        self._snapshot = None
        self.bad_steps += 1
        values = ', '.join(f'{k}={_fmt(v)}' for k, v in (log_dict or {}).items())
        logger.warning(f'iter {current_iter}: non-finite loss or gradient ({values or "no losses"}); step skipped, '
                       f'weights unchanged ({self.bad_steps}/{self.max_bad_steps} consecutive bad steps)')
        if self.bad_steps >= self.max_bad_steps:
            message = (f'training stopped at iter {current_iter}: {self.bad_steps} consecutive steps with a non-finite '
                       f'loss or gradient (last: {values or "no losses"}). The weights were not updated by these '
                       f'steps and nothing was saved after them')
            if where:
                message += f'; the last saved checkpoints are in {where}'
            message += ('. Lower the learning rate, check the data, or raise train.max_bad_steps, then run again '
                        'with --auto_resume.')
            logger.error(message)
            raise TrainingDivergedError(message)


def _device(tensors):
    for t in tensors:
        if isinstance(t, torch.Tensor):
            return t.device
    return torch.device('cpu')


def _fmt(value):
    value = float(value)
    return repr(value) if not math.isfinite(value) else f'{value:.4e}'


def checkpoint_dirs(model):
    """Where the model's checkpoints and training states go (for messages)."""
    path = model.opt.get('path') or {}
    dirs = [path[k] for k in ('models', 'training_states') if path.get(k)]
    return ' and '.join(dirs) if dirs else None
