"""What one forward pass chose: the per-sample bit of every dynamic selector, in forward order."""
import torch


class BitRecord:
    """Carries the image feature to the selectors and collects their choices during one forward pass.

    Each selector adds its choice and probabilities; the bits and their straight-through gradients are computed
    once for all selectors when first asked for (a few batched operations instead of a few per selector).

    Args:
        image_feature (Tensor | None): ``[B, 2]`` from :func:`image_gradient_feature`; ``None`` when the
            network has no selectors (fp / pams modes).
        batch (int): batch size, so an empty record still produces correctly shaped outputs.
        device (torch.device): the network input's device, where an empty record makes its outputs (a
            DataParallel gather needs every output on the replica's GPU).
    """

    def __init__(self, image_feature, batch, device):
        self.image_feature = image_feature
        self.batch = batch
        self.device = device
        self._choices = []
        self._probs = []
        self._values = []
        self._summary = None

    def add(self, index, choice, probs, bit_values):
        """Store selector ``index``'s choice ``[B]`` (a candidate index), its probabilities ``[B, K]`` and its
        candidate bit-widths ``bit_values`` ``[K]``."""
        if index != len(self._choices):
            raise RuntimeError(f'bit selector {index} ran out of order (expected selector {len(self._choices)}); '
                               'selectors must be registered in forward order')
        self._choices.append(choice)
        self._probs.append(probs)
        self._values.append(bit_values)
        self._summary = None

    def _summarise(self):
        """``(bits, weighted)``, both ``[B, n_selectors]``: the chosen bit ``b`` with the straight-through
        gradient of ``E_p[b]`` (docs/method.md#bit-selector), and ``b / E_p[b]`` (the expectation taken as a constant)."""
        if self._summary is None:
            if not self._choices:
                empty = torch.zeros(self.batch, 0, device=self.device)
                self._summary = (empty, empty)
            elif len({values.shape for values in self._values}) == 1:  # one batched computation (the usual case)
                values = torch.stack(self._values)  # [S, K]
                expected = (torch.stack(self._probs, dim=1) * values).sum(dim=2)  # [B, S]
                chosen = values.t().gather(0, torch.stack(self._choices, dim=1))  # [B, S]
                self._summary = self._straight_through(chosen, expected)
            else:  # candidate lists of different lengths
                expected = torch.stack([p @ v for p, v in zip(self._probs, self._values)], dim=1)
                chosen = torch.stack([v[c] for c, v in zip(self._choices, self._values)], dim=1)
                self._summary = self._straight_through(chosen, expected)
        return self._summary

    @staticmethod
    def _straight_through(chosen, expected):
        constant = expected.detach()
        bits = chosen + (expected - constant)
        return bits, bits / constant

    def bits(self):
        """``[B, n_selectors]`` chosen bit-widths (zero columns when there are no selectors)."""
        return self._summarise()[0]

    def weighted_bits(self):
        """``[B]`` sum over selectors of ``b / E_p[b]`` (docs/method.md#bit-selector), the quantity the bit loss penalises."""
        return self.selector_weighted_bits().sum(dim=1)

    def selector_weighted_bits(self):
        """``[B, n_selectors]`` the terms ``b / E_p[b]`` of :meth:`weighted_bits`, so that a BitOPs budget can
        weigh each selector by what its bits cost."""
        return self._summarise()[1]
