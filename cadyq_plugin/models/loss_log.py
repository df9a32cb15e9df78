"""The logged losses: summed on the device between two log lines, read by the CPU only when a line is printed.

BasicSR reads every loss of every iteration on the CPU (``reduce_loss_dict``: ``.item()`` per loss, and a
collective in distributed runs), which makes the CPU wait for the GPU several times per iteration. Here each
iteration adds its losses to device tensors; :meth:`LossLog.reduce` (at ``print_freq`` iterations) averages them
over the iterations since the previous line and over the ranks, in one collective and one read. Skipped steps
(non-finite, see :mod:`step_guard`) are left out of the mean; the step guard reports them. A window left open
by a stop goes into the training state, so a resumed run logs what the uninterrupted run logs.
"""
from collections import OrderedDict

import torch
from mmengine.dist import all_reduce


class LossLog:
    """Per loss name, the sum and count of its values over the good steps since the last :meth:`reduce`."""

    def __init__(self):
        self.sums = OrderedDict()
        self.counts = OrderedDict()

    def add(self, values, ok):
        """Add one step's ``values`` (name -> tensor) where ``ok`` (a boolean tensor: the step was taken)."""
        with torch.no_grad():
            for name, value in values.items():
                value = value.detach().float().mean()
                taken = torch.where(ok, value, 0.0)
                if name in self.sums:
                    self.sums[name] += taken
                    self.counts[name] += ok
                else:
                    self.sums[name] = taken
                    self.counts[name] = ok.to(torch.float32)

    def reduce(self):
        """The mean of every loss over the window and the ranks, as floats (NaN for a loss whose every step in
        the window was skipped); starts a new window. One all-reduce and one device-to-host copy."""
        if not self.sums:
            return OrderedDict()
        names = list(self.sums)
        stacked = torch.stack([self.sums[name] for name in names] + [self.counts[name] for name in names])
        all_reduce(stacked, op='sum')  # a no-op outside a process group
        values = stacked.cpu().tolist()
        self.sums.clear()
        self.counts.clear()
        return OrderedDict((name, values[i] / values[len(names) + i] if values[len(names) + i] else float('nan'))
                           for i, name in enumerate(names))

    def state_dict(self):
        """The open window as CPU tensors (for the training state)."""
        return {'sums': {name: value.cpu() for name, value in self.sums.items()},
                'counts': {name: value.cpu() for name, value in self.counts.items()}}

    def load_state_dict(self, state, device):
        self.sums = OrderedDict((name, value.to(device)) for name, value in state['sums'].items())
        self.counts = OrderedDict((name, state['counts'][name].to(device)) for name in self.sums)
