"""Skipping training steps whose loss or gradients are not finite, and stopping after too many in a row.

A NaN or Inf in one step must not reach the weights (Adam would spread it to every parameter it touches), nor
the buffers a forward pass updates (PAMS calibration ranges, BatchNorm statistics). The guard decides on the
device, so that a GPU step never waits for the CPU to read a flag:

1. :meth:`StepGuard.snapshot` copies the tensors a forward pass may change in place (:func:`mutable_state`:
   buffers and, while calibrating, the PAMS ranges);
2. :meth:`StepGuard.decide`, after ``backward``: one boolean tensor, the loss and every gradient finite (in
   distributed runs on every rank: one all-reduce of it, on the device);
3. :meth:`StepGuard.step`: the optimizer steps, not taken where the flag says bad. Optimizers that accept a
   ``found_inf`` tensor (fused Adam, AdamW and SGD: the mechanism of ``torch.amp.GradScaler``) skip the update
   on the device; others are stepped after the CPU reads the flag (free on the CPU, one wait on a GPU);
4. :meth:`StepGuard.record`: a bad step's snapshot is restored with ``torch.where`` and device counters keep
   the consecutive and total bad steps; after ``max_bad_steps`` consecutive bad steps every later step is
   skipped too (a latch), so the weights stay those of the last good step;
5. :meth:`StepGuard.check` reads the counters (a host sync): it warns about the bad steps since the last check
   and raises :class:`TrainingDivergedError` once the latch is set. The model checks after every step on the
   CPU (reading costs nothing there), and on a GPU at ``print_freq`` iterations and before every save, so
   nothing is saved after the stop.

The count of consecutive bad steps is part of the training state (``CADyQSRModel.save_training_state``).
"""
import math

import torch
from mmengine.dist import all_reduce

from cadyq_plugin.errors import UserError

DEFAULT_MAX_BAD_STEPS = 10


class TrainingDivergedError(UserError, RuntimeError):
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


def _all_finite(tensors, device):
    """One boolean tensor on ``device``: every element of every tensor is finite (computed without gradient
    rather than on detached copies: one operation less per tensor, and a CADyQ network has hundreds)."""
    tensors = [t for t in tensors if t is not None and t.numel()]
    if not tensors:
        return torch.ones((), dtype=torch.bool, device=device)
    with torch.no_grad():
        foreach_norm = getattr(torch, '_foreach_norm', None)
        norms = foreach_norm(tensors) if foreach_norm is not None else [t.float().norm() for t in tensors]
        # the norm of a tensor is finite iff all its elements are (a huge but finite gradient whose norm
        # overflows counts as bad too: Adam would turn it into garbage anyway)
        return torch.isfinite(torch.stack([n.float().to(device) for n in norms])).all()


def skips_on_device(optimizer):
    """Whether ``optimizer.step()`` honours a ``found_inf`` tensor (PyTorch's fused implementations)."""
    return bool(getattr(optimizer, '_step_supports_amp_scaling', False))


class StepGuard:
    """Decides on the device whether an optimizer step is taken; counts bad steps (see the module doc).

    Args:
        max_bad_steps (int): consecutive bad steps after which training stops.
    """

    def __init__(self, max_bad_steps=DEFAULT_MAX_BAD_STEPS):
        self.max_bad_steps = int(max_bad_steps)
        self._snapshot = None
        self._counters = None  # device tensors, made with the first decision
        self._loaded_bad_steps = 0
        self._bad_values = {}  # loss name -> its value at the last bad step (device tensors)

    # ------------------------------------------------------------------------------------------ the step
    def snapshot(self, net):
        """Copy what the coming forward pass may change in place (cheap: buffers and scalar ranges)."""
        self._snapshot = [(t, t.detach().clone()) for t in mutable_state(net)]

    def decide(self, tensors, optimizers):
        """One boolean tensor on the device of ``tensors``: they (losses) and all gradients of ``optimizers`` are
        finite, on every rank, and the latch is not set."""
        device = _device(tensors)
        ok = _all_finite(list(tensors), device) & _all_finite(_grads(optimizers), device)
        flag = ok.to(torch.float32).reshape(1)
        all_reduce(flag, op='min')  # a no-op outside a process group; on the group's device (nccl: CUDA)
        return (flag[0] > 0) & ~self._counter_tensors(device)['latched']

    def step(self, optimizers, ok):
        """Take the optimizer steps where ``ok``: on the device when every optimizer accepts ``found_inf``,
        else after reading ``ok`` on the CPU."""
        if all(skips_on_device(optimizer) for optimizer in optimizers):
            found_inf = (~ok).to(torch.float32)
            for optimizer in optimizers:
                optimizer.grad_scale, optimizer.found_inf = None, found_inf
                try:
                    optimizer.step()
                finally:
                    del optimizer.grad_scale, optimizer.found_inf
        elif bool(ok):
            for optimizer in optimizers:
                optimizer.step()

    def record(self, ok, current_iter, loss_dict):
        """After the step: restore the snapshot where bad, update the counters, keep the bad step's losses."""
        with torch.no_grad():
            if self._snapshot:
                tensors = [t for t, _ in self._snapshot]
                torch._foreach_copy_(tensors, [torch.where(ok, t, saved) for t, saved in self._snapshot])
            self._snapshot = None
            counters = self._counter_tensors(ok.device)
            bad = ~ok
            counters['consecutive'].copy_(torch.where(bad, counters['consecutive'] + 1, 0))
            counters['since_check'].add_(bad.to(torch.int64))
            counters['last_bad'].masked_fill_(bad, current_iter)
            counters['first_bad'].masked_fill_(bad & (counters['first_bad'] < 0), current_iter)
            newly_latched = ~counters['latched'] & (counters['consecutive'] >= self.max_bad_steps)
            counters['stop_iter'].masked_fill_(newly_latched, current_iter)
            counters['latched'].logical_or_(newly_latched)
            for name, value in loss_dict.items():
                value = value.detach().float().mean()
                kept = self._bad_values.get(name)
                self._bad_values[name] = torch.where(bad, value, value if kept is None else kept)

    # ------------------------------------------------------------------------------------------ the host side
    def check(self, current_iter, logger, optimizers=(), where=None):
        """Read the counters (a host sync): warn about the bad steps since the last check, clear the gradients
        of a bad last step, raise :class:`TrainingDivergedError` once ``max_bad_steps`` were bad in a row."""
        if self._counters is None:
            return
        names = list(self._counters)
        values = torch.stack([self._counters[name].to(torch.int64) for name in names]).cpu().tolist()  # one copy
        counters = dict(zip(names, values))
        if counters['since_check']:
            values = self._describe_bad_values() or 'no losses'
            if counters['since_check'] == 1:
                what = f'iter {counters["last_bad"]}: non-finite loss or gradient ({values}); step skipped'
            else:
                what = (f'iters {counters["first_bad"]}-{counters["last_bad"]}: {counters["since_check"]} steps with '
                        f'a non-finite loss or gradient (last: {values}); steps skipped')
            logger.warning(f'{what}, weights unchanged ({counters["consecutive"]}/{self.max_bad_steps} consecutive '
                           'bad steps)')
            with torch.no_grad():
                self._counters['since_check'].zero_()
                self._counters['first_bad'].fill_(-1)
        if counters['consecutive'] and counters['last_bad'] == current_iter:
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
        if counters['latched']:
            stop_iter = counters['stop_iter']
            message = (f'training stopped at iter {stop_iter}: {self.max_bad_steps} consecutive steps with a '
                       f'non-finite loss or gradient (last: {self._describe_bad_values() or "no losses"}). The '
                       'weights were not updated by these steps and nothing was saved after them')
            if stop_iter != current_iter:
                message += f' (found at iter {current_iter}; every step in between was skipped too)'
            if where:
                message += f'; the last saved checkpoints are in {where}'
            message += ('. Lower the learning rate, check the data, or raise train.max_bad_steps, then run again '
                        'with --auto_resume.')
            logger.error(message)
            raise TrainingDivergedError(message)

    @property
    def bad_steps(self):
        """Consecutive bad steps up to the last one (a host read)."""
        if self._counters is None:
            return self._loaded_bad_steps
        return int(self._counters['consecutive'])

    @bad_steps.setter
    def bad_steps(self, value):
        """Restored from a training state."""
        self._loaded_bad_steps = int(value)
        if self._counters is not None:
            self._counters['consecutive'].fill_(self._loaded_bad_steps)

    def _counter_tensors(self, device):
        if self._counters is None:
            def scalar(value, dtype=torch.int64):
                return torch.full((), value, dtype=dtype, device=device)
            self._counters = {'consecutive': scalar(self._loaded_bad_steps), 'since_check': scalar(0),
                              'first_bad': scalar(-1), 'last_bad': scalar(-1), 'stop_iter': scalar(-1),
                              'latched': scalar(False, torch.bool)}
        return self._counters

    def _describe_bad_values(self):
        if not self._bad_values:
            return ''
        values = torch.stack(list(self._bad_values.values())).cpu().tolist()
        return ', '.join(f'{name}={_fmt(value)}' for name, value in zip(self._bad_values, values))


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
