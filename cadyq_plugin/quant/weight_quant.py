"""Symmetric weight quantization (per tensor, docs/method.md#quantizers; per output channel for quantized FP
layers) and the convolutions that use it."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def weight_levels(weight, bits, channel_dim=None):
    """``(round(W * q / m), m, q)`` with ``m = max|W| + 1e-8`` and ``q = 2^(bits-1) - 1``: the integer levels
    ``-q..q`` of the quantized weight ``level * m / q`` (as float), shared by both backends. ``m`` is one number,
    or with ``channel_dim`` one per output channel (shaped to broadcast against ``W``)."""
    q = 2**(bits - 1) - 1
    magnitude = weight.detach().abs()
    if channel_dim is None:
        m = magnitude.max() + 1e-8
    else:
        m = magnitude.amax(dim=[d for d in range(weight.dim()) if d != channel_dim], keepdim=True) + 1e-8
    return (weight.detach() * q).div_(m).round_(), m, q


class _QuantizeWeight(torch.autograd.Function):
    """Forward: ``round(W * q / m) * m / q`` on one buffer; backward: the identity (straight-through)."""

    @staticmethod
    def forward(ctx, weight, bits, channel_dim):
        level, m, q = weight_levels(weight, bits, channel_dim)
        return level.mul_(m).div_(q)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def quantize_weight(weight, bits, channel_dim=None):
    """Quantize ``weight`` to ``bits`` with a scale ``max|W| + 1e-8`` per tensor (or per index of ``channel_dim``),
    recomputed every call; the gradient passes straight through to ``weight`` (the scale is treated as a constant).

    The operation order (``W * q / m`` then ``* m / q``) is the reference's: rounding is discontinuous, so a
    reordered formula would move values across rounding boundaries.
    """
    return _QuantizeWeight.apply(weight, bits, channel_dim)


class WeightQuantized:
    """What the weight-quantized convs share (mixed into ``nn.Conv2d`` / ``nn.ConvTranspose2d``).

    Parameter names are those of the torch conv, so FP checkpoints load into it unchanged. ``input_quantizer``
    names the activation quantizer that feeds the conv; the BitOPs counter reads its bit-width from there, and
    the int8 backend makes that quantizer emit integer codes. ``int8_kernel`` (set by ``set_backend``) runs the
    conv in eval mode; training always takes the fake-quantized path.
    """

    def _init_weight_quant(self, w_bits, per_channel=False):
        self.w_bits = w_bits
        # weight scales per output channel (quantized FP layers) or one per tensor (the CADyQ convs, as the reference)
        self.w_channel_dim = (1 if isinstance(self, nn.ConvTranspose2d) else 0) if per_channel else None
        object.__setattr__(self, 'input_quantizer', None)  # a reference, not a submodule
        self.int8_kernel = None

    def feed_from(self, quantizer):
        """Record which activation quantizer produces this conv's input (used for BitOPs)."""
        object.__setattr__(self, 'input_quantizer', quantizer)
        return self

    def forward(self, x):
        if self.int8_kernel is not None and not self.training:
            return self.int8_kernel(self, x)
        return self.fake_forward(x, quantize_weight(self.weight, self.w_bits, self.w_channel_dim))

    def train(self, mode=True):
        if self.int8_kernel is not None:
            self.int8_kernel.clear()
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs):
        if self.int8_kernel is not None:
            self.int8_kernel.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self):
        per_channel = ', per channel' if self.w_channel_dim is not None else ''
        return f'{super().extra_repr()}, w_bits={self.w_bits}{per_channel}'


class QConv2d(WeightQuantized, nn.Conv2d):
    """``nn.Conv2d`` whose weight is quantized on the fly; the bias stays full precision (see
    :class:`WeightQuantized`)."""

    def __init__(self, *args, w_bits=8, per_channel=False, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_weight_quant(w_bits, per_channel)

    def fake_forward(self, x, weight):
        return self._conv_forward(x, weight, self.bias)


class QConvTranspose2d(WeightQuantized, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` whose weight is quantized on the fly (IDN's tail with ``fp_layer_bits``)."""

    def __init__(self, *args, w_bits=8, per_channel=False, **kwargs):
        super().__init__(*args, **kwargs)
        if per_channel and self.groups != 1:
            raise ValueError('per-channel weight scales of a transposed conv need groups=1')
        self._init_weight_quant(w_bits, per_channel)

    def fake_forward(self, x, weight):
        return F.conv_transpose2d(x, weight, self.bias, self.stride, self.padding, self.output_padding, self.groups,
                                  self.dilation)
