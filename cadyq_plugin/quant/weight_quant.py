"""Per-tensor symmetric weight quantization and the convolution that uses it (docs/method.md#quantizers)."""
import torch
import torch.nn as nn


def weight_levels(weight, bits):
    """``(round(W * q / m), m, q)`` with ``m = max|W| + 1e-8`` and ``q = 2^(bits-1) - 1``: the integer levels
    ``-q..q`` of the quantized weight ``level * m / q`` (as float), shared by both backends."""
    q = 2**(bits - 1) - 1
    m = weight.detach().abs().max() + 1e-8
    return (weight.detach() * q).div_(m).round_(), m, q


class _QuantizeWeight(torch.autograd.Function):
    """Forward: ``round(W * q / m) * m / q`` on one buffer; backward: the identity (straight-through)."""

    @staticmethod
    def forward(ctx, weight, bits):
        level, m, q = weight_levels(weight, bits)
        return level.mul_(m).div_(q)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def quantize_weight(weight, bits):
    """Quantize ``weight`` to ``bits`` with a per-tensor scale ``max|W| + 1e-8``, recomputed every call; the
    gradient passes straight through to ``weight`` (the scale is treated as a constant).

    The operation order (``W * q / m`` then ``* m / q``) is the reference's: rounding is discontinuous, so a
    reordered formula would move values across rounding boundaries.
    """
    return _QuantizeWeight.apply(weight, bits)


class QConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weight is quantized on the fly; the bias stays full precision.

    Parameter names are those of ``nn.Conv2d``, so FP checkpoints load into it unchanged. ``input_quantizer``
    names the activation quantizer that feeds this conv; the BitOPs counter reads its bit-width from there, and
    the int8 backend makes that quantizer emit integer codes. ``int8_kernel`` (set by ``set_backend``) runs the
    conv in eval mode; training always takes the fake-quantized path.
    """

    def __init__(self, *args, w_bits=8, **kwargs):
        super().__init__(*args, **kwargs)
        self.w_bits = w_bits
        object.__setattr__(self, 'input_quantizer', None)  # a reference, not a submodule
        self.int8_kernel = None

    def feed_from(self, quantizer):
        """Record which activation quantizer produces this conv's input (used for BitOPs)."""
        object.__setattr__(self, 'input_quantizer', quantizer)
        return self

    def forward(self, x):
        if self.int8_kernel is not None and not self.training:
            return self.int8_kernel(self, x)
        return self._conv_forward(x, quantize_weight(self.weight, self.w_bits), self.bias)

    def train(self, mode=True):
        if self.int8_kernel is not None:
            self.int8_kernel.clear()
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs):
        if self.int8_kernel is not None:
            self.int8_kernel.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self):
        return f'{super().extra_repr()}, w_bits={self.w_bits}'
