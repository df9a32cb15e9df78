"""A bit budget resolved against one network: a target FAB, or a target BitOPs at a 1280x720 output.

Both are budgets on a weighted mean of the selectors' bits, which is what the budget's price controller steers: FAB
weighs every selector alike (docs/method.md#fab-and-bitops); BitOPs are linear in each selector's bit (:func:`bitops_per_bit`), so a
BitOPs target is a target on the mean bit weighted by each selector's BitOPs per bit (its MACs x w_bits / 32^2).
The two differ when the selectors' layers differ in MACs (IDN: its 48->32 grouped convs cost an eighth of its
64->48 ones).
"""
import torch

from cadyq_plugin.metrics.bitops import bitops_per_bit, forward_bitops
from cadyq_plugin.metrics.macs import count_layer_macs

BUDGET_HR_SIZE = (1280, 720)  # SR output (width, height) of a target_bitops: `basicsr bitops`' default size
BUDGET_KINDS = ('fab', 'bitops')
BITOPS_KEY = 'bitops_{}x{}'.format(*BUDGET_HR_SIZE)  # results column / TensorBoard name of a BitOPs budget


def budget_layers(net, hr_size=BUDGET_HR_SIZE):
    """MAC table of a CADyQ ``net`` for an SR output of ``hr_size`` (width, height)."""
    width, height = hr_size
    return count_layer_macs(net, height // net.upscale, width // net.upscale)


class BitBudget:
    """``target_fab`` or ``target_bitops`` (G at :data:`BUDGET_HR_SIZE`) of one network.

    Args:
        kind (str): ``fab`` or ``bitops``.
        target (float): the target in the user's unit (bits, or G BitOPs).
        layers (list[LayerCost]): the network's MAC table at :data:`BUDGET_HR_SIZE` (:func:`budget_layers`).
        bits (list[int]): the candidate bit-widths of the selectors.
        n_selectors (int): number of bit selectors.
    """

    def __init__(self, kind, target, layers, bits, n_selectors):
        if kind not in BUDGET_KINDS:
            raise ValueError(f'budget kind must be one of {BUDGET_KINDS}, got {kind!r}')
        self.kind = kind
        self.target = float(target)
        self.layers = layers
        self.bits = list(bits)
        base, slopes = bitops_per_bit(layers, n_selectors)
        self.slope_sum = sum(slopes)
        if self.slope_sum <= 0:
            raise ValueError('the network has no conv whose input a bit selector quantizes: no BitOPs to budget')
        self.base = base
        costs = slopes if kind == 'bitops' else [1.0] * n_selectors
        total = sum(costs)
        self.selector_weights = torch.tensor([c * n_selectors / total for c in costs], device='cpu')  # mean 1
        self.target_bit = self.from_user(self.target)

    def to(self, device):
        """Keep the per-selector tensors on ``device`` (the network's), so a training step copies nothing."""
        self.selector_weights = self.selector_weights.to(device)
        return self

    @classmethod
    def of_network(cls, kind, target, net):
        """The budget of a CADyQ arch instance (any device, ``meta`` included)."""
        return cls(kind, target, budget_layers(net), net.quant.bits, net.n_selectors)

    @property
    def name(self):
        """The options key: ``target_fab`` or ``target_bitops``."""
        return f'target_{self.kind}'

    def mean_bit(self, bits):
        """The steered mean bit of ``bits`` [..., n_selectors] (mean over all leading dims): FAB for a FAB budget,
        the BitOPs-weighted mean bit for a BitOPs budget (``bits`` on the device given to :meth:`to`)."""
        bits = bits.float()
        if self.kind == 'fab':
            return bits.mean()
        return (bits @ self.selector_weights).mean() / bits.shape[-1]

    def candidate_costs(self, candidates):
        """``[n_selectors, n_candidates]`` what each selector's candidate costs in the budget's mean bit: its bit
        times the selector's weight (1 for FAB, its BitOPs per bit, normalised to mean 1, for BitOPs)."""
        return self.selector_weights[:, None] * candidates.to(self.selector_weights)[None, :]

    def to_user(self, mean_bit):
        """A steered mean bit (a number or a tensor, kept on its device) in the user's unit: itself (FAB) or G
        BitOPs at :data:`BUDGET_HR_SIZE` (linear in it: ``base + slope_sum * mean_bit``)."""
        return mean_bit if self.kind == 'fab' else (self.base + self.slope_sum * mean_bit) / 1e9

    def from_user(self, value):
        """Inverse of :meth:`to_user`: the mean bit at which the budget's measure equals ``value``."""
        if self.kind == 'fab':
            return float(value)
        return (float(value) * 1e9 - self.base) / self.slope_sum

    def bitops_of(self, bits):
        """G BitOPs at :data:`BUDGET_HR_SIZE` of ``bits`` [..., n_selectors], each selector at its mean bit."""
        return forward_bitops(self.layers, bits.float().reshape(-1, bits.shape[-1]).mean(dim=0)) / 1e9

    def reachable(self):
        """``(low, high)`` of the budget's measure with every selector at its lowest / highest candidate; a target
        must lie strictly inside (at an end the selectors can only all sit at that candidate)."""
        low, high = min(self.bits), max(self.bits)
        return (self.to_user(low), self.to_user(high)) if self.kind == 'bitops' else (float(low), float(high))


def budget_spec(opt):
    """``(kind, target)`` of the run's budget (``fab`` or ``bitops``), or None."""
    section = (opt.get('train') or {}).get('bit_opt') if opt['is_train'] else opt.get('val')
    for kind in ('fab', 'bitops'):
        value = (section or {}).get(f'target_{kind}')
        if value is not None:
            return kind, value
    return None
