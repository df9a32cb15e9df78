"""The bit loss that pushes selectors towards lower bit-widths with the reference's growing weight
(docs/method.md#training); with a bit budget (``target_fab`` / ``target_bitops``) it holds the budget's controller
instead (:mod:`cadyq_plugin.budget.controller`), which replaces the loss by a price on the selectors' logits."""
import math

import torch.nn as nn
from basicsr.utils.registry import LOSS_REGISTRY

from cadyq_plugin.budget.controller import (DEFAULT_FLOOR, DEFAULT_GAIN, DEFAULT_SMOOTHING, BudgetController,
                                            budget_problems)


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
