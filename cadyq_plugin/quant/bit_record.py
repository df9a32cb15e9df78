"""What one forward pass chose: the per-sample bit of every dynamic selector, in forward order."""
import torch


class BitRecord:
    """Carries the image feature to the selectors and collects their choices during one forward pass.

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
        self._bits = []
        self._weighted = []

    def add(self, index, bits, expected_bits):
        """Store selector ``index``'s choice: ``bits`` [B] (with the straight-through gradient of E_p[b])."""
        if index != len(self._bits):
            raise RuntimeError(f'bit selector {index} ran out of order (expected selector {len(self._bits)}); '
                               'selectors must be registered in forward order')
        self._bits.append(bits)
        self._weighted.append(bits / expected_bits.detach())

    def bits(self):
        """``[B, n_selectors]`` chosen bit-widths (zero columns when there are no selectors)."""
        if not self._bits:
            return torch.zeros(self.batch, 0, device=self.device)
        return torch.stack(self._bits, dim=1)

    def weighted_bits(self):
        """``[B]`` sum over selectors of ``b / E_p[b]`` (docs/method.md#bit-selector), the quantity the bit loss penalises."""
        return self.selector_weighted_bits().sum(dim=1)

    def selector_weighted_bits(self):
        """``[B, n_selectors]`` the terms ``b / E_p[b]`` of :meth:`weighted_bits`, so that a BitOPs budget can
        weigh each selector by what its bits cost."""
        if not self._weighted:
            return torch.zeros(self.batch, 0, device=self.device)
        return torch.stack(self._weighted, dim=1)
