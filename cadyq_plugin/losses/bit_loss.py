"""The bit loss that pushes selectors towards lower bit-widths, with a weight that grows (SPEC §4)."""
import math

import torch.nn as nn
from basicsr.utils.registry import LOSS_REGISTRY


@LOSS_REGISTRY.register()
class BitLoss(nn.Module):
    """``w(it) * reduce(weighted_bits)`` with ``w(it) = loss_weight + growth * ceil(it / growth_every)``.

    Args:
        loss_weight (float): weight at iteration 0 (reference 1e-4).
        growth (float): added every ``growth_every`` iterations (reference 1e-6 per 1000).
        reduction (str): ``sum`` over the batch (reference) or ``mean``.
    """

    def __init__(self, loss_weight=1e-4, growth=1e-6, growth_every=1000, reduction='sum'):
        super().__init__()
        if reduction not in ('sum', 'mean'):
            raise ValueError(f"BitLoss reduction must be 'sum' or 'mean', got {reduction!r}")
        if growth_every <= 0:
            raise ValueError(f'BitLoss growth_every must be positive, got {growth_every!r}')
        self.loss_weight = loss_weight
        self.growth = growth
        self.growth_every = growth_every
        self.reduction = reduction

    def weight(self, current_iter):
        return self.loss_weight + self.growth * math.ceil(current_iter / self.growth_every)

    def forward(self, weighted_bits, current_iter):
        reduced = weighted_bits.sum() if self.reduction == 'sum' else weighted_bits.mean()
        return self.weight(current_iter) * reduced
