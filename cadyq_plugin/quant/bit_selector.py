"""The CADyQ bit selector (SPEC §2): picks, per sample, the bit-width of one activation quantizer."""
import math

import torch
import torch.nn as nn

from cadyq_plugin.quant.act_quant import PAMSQuant, calibrate, levels, pams_quantize


def check_candidate_bits(bits):
    """Validate a candidate list: sorted, distinct integers in 2..8, at least two of them."""
    values = list(bits) if isinstance(bits, (list, tuple)) else None
    if (values is None or len(values) < 2 or any(isinstance(b, bool) or not isinstance(b, int) for b in values)
            or any(not 2 <= b <= 8 for b in values) or values != sorted(set(values))):
        raise ValueError(f'candidate bits must be a sorted list of at least 2 distinct integers in 2..8, '
                         f'got {bits!r}')
    return values


def layer_std(x):
    """Unbiased std over H, W per sample and channel, ``[B, C]`` (two-pass; torch.std is slow on the CPU).

    A channels-last ``x`` (the int8 backend's layout) is reduced as ``[B, H*W, C]`` without a layout copy; the
    result differs from the NCHW reduction only by float round-off.
    """
    with torch.no_grad():
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            flat = x.permute(0, 2, 3, 1).flatten(1, 2)
            centered = flat - flat.mean(dim=1, keepdim=True)
            return centered.mul_(centered).sum(dim=1).sqrt_() / _sqrt_count(flat.shape[1] - 1, x.dtype)
        pixels = tuple(range(2, x.dim()))
        centered = x - x.mean(dim=pixels, keepdim=True)
        return torch.linalg.vector_norm(centered, dim=pixels) / _sqrt_count(math.prod(x.shape[2:]) - 1, x.dtype)


def _sqrt_count(n, dtype):
    """``sqrt(n)`` of a pixel count: a float, or a graph value of ``dtype`` in a compiled or exported graph (where
    ``n`` may be symbolic); both round to the same ``dtype`` number."""
    if torch.compiler.is_compiling():
        return torch.scalar_tensor(n, dtype=dtype).sqrt()
    return math.sqrt(n)


class BitSelector(nn.Module):
    """Dynamic activation quantizer: one PAMS quantizer per candidate bit-width and a linear selector.

    The selector sees ``concat(image feature [B, 2], std over H, W of x [B, C])`` and is initialised so that
    every input starts at the largest candidate. ``index`` is this selector's position in forward order,
    assigned by the architecture. ``int8_codes`` as in :class:`PAMSQuant`, with per-sample ``alpha`` and ``q``.
    """

    def __init__(self, channels, bits=(4, 6, 8), alpha_init=10.0):
        super().__init__()
        self.bits = check_candidate_bits(list(bits))
        self.quantizers = nn.ModuleList(PAMSQuant(b, alpha_init) for b in self.bits)
        self.fc = nn.Linear(channels + 2, len(self.bits))
        with torch.no_grad():
            self.fc.weight.fill_(1.0)
            self.fc.bias.zero_()
            self.fc.bias[-1] = 1.0
        self.register_buffer('bit_values', torch.tensor(self.bits, dtype=torch.float32), persistent=False)
        self.register_buffer('levels', torch.tensor([float(levels(b)) for b in self.bits]), persistent=False)
        self.index = None
        self.calibrating = False
        self.int8_codes = None

    def forward(self, x, record):
        sigma = layer_std(x)
        logits = self.fc(torch.cat([record.image_feature, sigma], dim=1))
        choice = logits.argmax(dim=1)
        probs = torch.softmax(logits, dim=1)
        calibrating = self.training and self.calibrating
        if calibrating:
            calibrate(self.quantizers, x)
        alphas = torch.cat([quantizer.alpha for quantizer in self.quantizers])
        if self.int8_codes is not None and not self.training:
            shape = (-1,) + (1,) * (x.dim() - 1)
            y = self.int8_codes(x, alphas[choice].view(shape), self.levels[choice].view(shape))
        else:
            y = pams_quantize(x, alphas, self.levels, not calibrating, choice, probs)
        record.add(self.index, choice, probs, self.bit_values)
        return y

    def bit_spec(self):
        """How BitOPs counting sees this quantizer: dynamic, one column of the record's bits."""
        return ('dynamic', self.index)

    def extra_repr(self):
        return f'bits={self.bits}, index={self.index}'
