"""The bit loss that pushes selectors towards lower bit-widths: with the reference's growing weight (docs/method.md#training), or
with a weight steered to a bit budget (``target_fab`` / ``target_bitops``, :mod:`bit_budget`)."""
import math
import numbers

import torch.nn as nn
from basicsr.utils.registry import LOSS_REGISTRY

from cadyq_plugin.losses.bit_budget import BudgetController

DEFAULT_KP = 20.0
DEFAULT_KI = 4.0
DEFAULT_SMOOTHING = 0.5
DEFAULT_INTEGRAL_BAND = 1.0  # bits; None integrates every error


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def budget_problems(target_fab=None, target_bitops=None, kp=DEFAULT_KP, ki=DEFAULT_KI, smoothing=DEFAULT_SMOOTHING,
                    integral_band=DEFAULT_INTEGRAL_BAND):
    """``(key, value, expected)`` for each budget argument of :class:`BitLoss` it cannot run with; the range a
    target must lie in depends on the network and is checked by the config check."""
    problems = []
    for key, value in (('target_fab', target_fab), ('target_bitops', target_bitops)):
        if value is not None and not (_is_real(value) and value > 0):
            problems.append((key, value, 'expected a positive number'))
    if target_fab is not None and target_bitops is not None:
        problems.append(('target_bitops', target_bitops, f'expected only one target: target_fab is {target_fab!r} '
                         'too (a FAB and a BitOPs budget cannot both be met)'))
    for key, value in (('kp', kp), ('ki', ki)):
        if not (_is_real(value) and value >= 0):
            problems.append((key, value, 'expected a number >= 0 (a gain of the budget controller)'))
    if _is_real(kp) and _is_real(ki) and kp == ki == 0:
        problems.append(('ki', ki, 'expected kp or ki > 0: with both 0 the budget is never steered'))
    if not (_is_real(smoothing) and 0 <= smoothing < 1):
        problems.append(('smoothing', smoothing, 'expected a number in [0, 1) (of the running error)'))
    if integral_band is not None and not (_is_real(integral_band) and integral_band > 0):
        problems.append(('integral_band', integral_band, 'expected a positive number of bits (the running error '
                         'within which the controller integrates) or null (integrate always)'))
    return problems


@LOSS_REGISTRY.register()
class BitLoss(nn.Module):
    """``w * reduce(weighted_bits)``.

    Without a target ``w(it) = loss_weight + growth * ceil(it / growth_every)`` (the reference schedule). With
    ``target_fab`` or ``target_bitops`` the weight is a :class:`BudgetController`'s, updated every iteration by
    :meth:`steer` with the global batch's error (the model measures it); ``growth`` and ``growth_every`` are then
    unused and ``loss_weight`` is the scale of the controller's weight.

    Args:
        loss_weight (float): weight at iteration 0 (reference 1e-4).
        growth (float): added every ``growth_every`` iterations (reference 1e-6 per 1000).
        reduction (str): ``sum`` over the batch (reference) or ``mean``.
        target_fab (float | None): the FAB to train to, strictly between the smallest and largest candidate.
        target_bitops (float | None): the BitOPs (G, 1280x720 output) to train to.
        kp, ki, smoothing, integral_band: the controller's gains, the smoothing of its running error and the band
            around the target within which it integrates.
    """

    def __init__(self, loss_weight=1e-4, growth=1e-6, growth_every=1000, reduction='sum', target_fab=None,
                 target_bitops=None, kp=DEFAULT_KP, ki=DEFAULT_KI, smoothing=DEFAULT_SMOOTHING,
                 integral_band=DEFAULT_INTEGRAL_BAND):
        super().__init__()
        if reduction not in ('sum', 'mean'):
            raise ValueError(f"BitLoss reduction must be 'sum' or 'mean', got {reduction!r}")
        if growth_every <= 0:
            raise ValueError(f'BitLoss growth_every must be positive, got {growth_every!r}')
        problems = budget_problems(target_fab, target_bitops, kp, ki, smoothing, integral_band)
        if problems:
            raise ValueError('BitLoss ' + '; '.join(f'{key} = {value!r}: {expected}' for key, value, expected in
                                                    problems))
        self.loss_weight = loss_weight
        self.growth = growth
        self.growth_every = growth_every
        self.reduction = reduction
        self.target = ('fab', target_fab) if target_fab is not None else (
            ('bitops', target_bitops) if target_bitops is not None else None)
        self.controller = BudgetController(loss_weight, kp, ki, smoothing, integral_band) if self.target else None

    def weight(self, current_iter):
        if self.controller is not None:
            return self.controller.weight
        return self.loss_weight + self.growth * math.ceil(current_iter / self.growth_every)

    def steer(self, error):
        """Update the budget controller with this iteration's error (mean bit minus target, in bits)."""
        if self.controller is None:
            raise RuntimeError('BitLoss has no target_fab / target_bitops to steer to')
        return self.controller.update(error)

    def forward(self, weighted_bits, current_iter):
        reduced = weighted_bits.sum() if self.reduction == 'sum' else weighted_bits.mean()
        return self.weight(current_iter) * reduced
