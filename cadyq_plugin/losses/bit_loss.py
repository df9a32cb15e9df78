"""The bit loss that pushes selectors towards lower bit-widths with the reference's growing weight (docs/method.md#training); with a
bit budget (``target_fab`` / ``target_bitops``) it holds the budget's controller instead (:mod:`bit_budget`), which
replaces the loss by a price on the selectors' logits."""
import math
import numbers

import torch.nn as nn
from basicsr.utils.registry import LOSS_REGISTRY

from cadyq_plugin.losses.bit_budget import BudgetController

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


@LOSS_REGISTRY.register()
class BitLoss(nn.Module):
    """``w(it) * reduce(weighted_bits)``, ``w(it) = loss_weight + growth * ceil(it / growth_every)`` (the reference).

    With ``target_fab`` or ``target_bitops`` there is no loss: the model holds the budget by a price on the
    selectors' logits, set by :attr:`controller` (a :class:`BudgetController`) from the global batch's error every
    iteration (see :mod:`bit_budget`); ``loss_weight``, ``growth``, ``growth_every`` and ``reduction`` are unused.

    Args:
        loss_weight (float): weight at iteration 0 (reference 1e-4).
        growth (float): added every ``growth_every`` iterations (reference 1e-6 per 1000).
        reduction (str): ``sum`` over the batch (reference) or ``mean``.
        target_fab (float | None): the FAB to train to, strictly between the smallest and largest candidate.
        target_bitops (float | None): the BitOPs (G, 1280x720 output) to train to.
        gain, floor, smoothing: the price controller's relative step per bit of error, its step at price 0, and the
            smoothing of the error it steps by.
    """

    def __init__(self, loss_weight=1e-4, growth=1e-6, growth_every=1000, reduction='sum', target_fab=None,
                 target_bitops=None, gain=DEFAULT_GAIN, floor=DEFAULT_FLOOR, smoothing=DEFAULT_SMOOTHING):
        super().__init__()
        if reduction not in ('sum', 'mean'):
            raise ValueError(f"BitLoss reduction must be 'sum' or 'mean', got {reduction!r}")
        if growth_every <= 0:
            raise ValueError(f'BitLoss growth_every must be positive, got {growth_every!r}')
        problems = budget_problems(target_fab, target_bitops, gain, floor, smoothing)
        if problems:
            raise ValueError('BitLoss ' + '; '.join(f'{key} = {value!r}: {expected}' for key, value, expected in
                                                    problems))
        self.loss_weight = loss_weight
        self.growth = growth
        self.growth_every = growth_every
        self.reduction = reduction
        self.target = ('fab', target_fab) if target_fab is not None else (
            ('bitops', target_bitops) if target_bitops is not None else None)
        self.controller = BudgetController(gain, floor, smoothing) if self.target else None

    def weight(self, current_iter):
        return self.loss_weight + self.growth * math.ceil(current_iter / self.growth_every)

    def forward(self, weighted_bits, current_iter):
        if self.controller is not None:
            raise RuntimeError('BitLoss with a target_fab / target_bitops is no loss: the model steers the price')
        reduced = weighted_bits.sum() if self.reduction == 'sum' else weighted_bits.mean()
        return self.weight(current_iter) * reduced
