"""The controller that holds the training batches' mean bit at a budget: a price on bits in the selectors' logits.

Every bit selector chooses ``argmax_k z_k`` over its candidates' logits. A price ``lambda`` (logits per bit) makes
it choose ``argmax_k (z_k - lambda * s_l * bits_k)`` instead (``s_l``: the selector's cost per bit, 1 for a FAB
budget, its BitOPs per bit normalised to mean 1 for a BitOPs budget): the Lagrangian relaxation of "mean bit =
target", where each selector and patch keeps a higher candidate only while what its logits prefer outweighs the
price of the extra bits. A shift of a logit by a constant per candidate is a shift of the selector's bias, so the
price is applied to the biases themselves (by the model, after each step): the trained network carries its
price, inference needs nothing else, and the selectors' other parameters learn from the distortion losses only.

Its integral controller, on the running error of the (global) batches' mean bit::

    e_t = mean bit - target,   r_t = s * r_{t-1} + (1 - s) * e_t    (r_1 = e_1)
    lambda_t = lambda_{t-1} + gain * (|lambda_{t-1}| + floor) * r_t      (lambda_0 = 0)

The step is relative to the price itself: the logits' scale differs by orders of magnitude between backbones (the
selector's input is the image gradient times ``grad_scale`` and the std of activations on the backbone's own
scale: about 1e3 for EDSR-baseline, 1 for CARN) and grows while the selectors learn, and so does the price that
holds a budget; a relative step reaches any scale in a few tens of iterations. ``floor`` (logits per bit) lets it
leave 0 and cross it. The mean bit responds to the price at once (it is a function of the current logits; no
optimizer lags in the loop), so an integral term settles it; the smoothing ``s`` keeps the loop stable where the
mean bit is very sensitive to the price (nearly content-blind selectors, whose batch FAB jumps by bits for a 2 %
change of the price: with the raw batch error the price alternated around that point every iteration).

The state (the number of updates and two tensors) is in the training state (:meth:`state_dict`), so a resumed run
continues it exactly; the update runs on the device of the error, without waiting for it (no ``.item()``).
"""
import numbers

import torch

DEFAULT_GAIN = 0.05  # relative change of the price per bit of error and iteration
DEFAULT_FLOOR = 0.02  # logits per bit: the price's step at price 0
DEFAULT_SMOOTHING = 0.8  # of the running error
# settings of the bit-loss weight controller of earlier versions: refused with what replaced them
RETIRED_KEYS = ('kp', 'ki', 'integral_band')


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def budget_problems(target_fab=None, target_bitops=None, gain=DEFAULT_GAIN, floor=DEFAULT_FLOOR,
                    smoothing=DEFAULT_SMOOTHING, **retired):
    """``(key, value, expected)`` for each budget argument of :class:`BitLoss` it cannot run with (``retired``: the
    earlier controller's settings, each refused); the range a target must lie in depends on the network and is
    checked by the config check."""
    problems = []
    for key, value in (('target_fab', target_fab), ('target_bitops', target_bitops)):
        if value is not None and not (_is_real(value) and value > 0):
            problems.append((key, value, 'expected a positive number'))
    if target_fab is not None and target_bitops is not None:
        problems.append(('target_bitops', target_bitops, f'expected only one target: target_fab is {target_fab!r} '
                         'too (a FAB and a BitOPs budget cannot both be met)'))
    for key, value in (('gain', gain), ('floor', floor)):
        if not (_is_real(value) and value > 0):
            problems.append((key, value, 'expected a positive number (of the budget\'s price controller)'))
    if not (_is_real(smoothing) and 0 <= smoothing < 1):
        problems.append(('smoothing', smoothing, 'expected a number in [0, 1) (of the running error)'))
    for key, value in retired.items():
        expected = (f'is a setting of the bit-loss weight controller of earlier versions: a budget is now held by a '
                    f'price on the selectors\' logits, set by gain / floor (see docs/bit_budget.md); remove {key}')
        problems.append((key, value, expected if key in RETIRED_KEYS else 'not a setting of the bit budget'))
    return problems


class BudgetController:
    """Integral controller of the bit price (see the module doc).

    Args:
        gain (float): relative step of the price per bit of error.
        floor (float): the price's step at price 0, per bit of error, as a price (logits per bit).
        smoothing (float): ``s`` of the running error, in [0, 1).
    """

    def __init__(self, gain, floor, smoothing):
        self.gain = float(gain)
        self.floor = float(floor)
        self.smoothing = float(smoothing)
        self.steps = 0
        self.running = torch.zeros(())
        self.price = torch.zeros(())

    def update(self, error):
        """One iteration's error (mean bit minus target, a 0-dim tensor); returns the change of the price."""
        error = error.detach().float()
        if self.steps == 0:
            self.running, self.price = error.clone(), torch.zeros_like(error)
        else:
            self.running = self.smoothing * self.running + (1 - self.smoothing) * error
        step = self.gain * (self.price.abs() + self.floor) * self.running
        self.price = self.price + step
        self.steps += 1
        return step

    def state_dict(self):
        return {'steps': self.steps, 'running': self.running.detach().cpu(), 'price': self.price.detach().cpu()}

    def load_state_dict(self, state, device=None):
        if 'price' not in state:
            raise ValueError('the training state holds the bit-loss weight controller of an earlier version '
                             f'(keys {sorted(state)}); the budget is now steered by a price on the selectors\' '
                             'logits: resume with that version, or start the stage again from its initial network')
        self.steps = int(state['steps'])
        self.running = torch.as_tensor(state['running'], dtype=torch.float32, device=device).clone()
        self.price = torch.as_tensor(state['price'], dtype=torch.float32, device=device).clone()
