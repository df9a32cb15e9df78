"""Symmetric weight quantization (per tensor, docs/method.md#quantizers; per output channel for quantized FP
layers) and the convolutions that use it."""
import contextlib
from collections import defaultdict

import torch
import torch.nn as nn
import torch.nn.functional as F


def weight_levels(weight, bits, channel_dim=None):
    """``(round(W * q / m), m, q)`` with ``m = max|W| + 1e-8`` and ``q = 2^(bits-1) - 1``: the integer levels
    ``-q..q`` of the quantized weight ``level * m / q`` (as float), shared by both backends. ``m`` is one number,
    or with ``channel_dim`` one per output channel (shaped to broadcast against ``W``)."""
    q = 2**(bits - 1) - 1
    if weight.requires_grad and torch.is_grad_enabled():
        weight = weight.detach()
    if channel_dim is None:
        m = torch.linalg.vector_norm(weight, ord=float('inf')) + 1e-8  # max |W|, exactly
    else:
        m = weight.abs().amax(dim=[d for d in range(weight.dim()) if d != channel_dim], keepdim=True) + 1e-8
    return (weight * q).div_(m).round_(), m, q


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


class _QuantizeWeights(torch.autograd.Function):
    """:class:`_QuantizeWeight` of several weights of one bit-width at once, with multi-tensor kernels (the same
    operations on every element, so the same numbers): a handful of operations for all of a network's convs."""

    @staticmethod
    def forward(ctx, bits, *weights):
        ctx.set_materialize_grads(False)  # a conv that does not run gives its weight no gradient, not zeros
        q = 2**(bits - 1) - 1
        m = torch._foreach_add(torch._foreach_norm(weights, ord=float('inf')), 1e-8)
        quantized = torch._foreach_mul(weights, q)
        torch._foreach_div_(quantized, m)
        torch._foreach_round_(quantized)
        torch._foreach_mul_(quantized, m)
        torch._foreach_div_(quantized, q)
        return tuple(quantized)

    @staticmethod
    def backward(ctx, *grads):
        return (None, ) + grads


@contextlib.contextmanager
def weights_quantized_together(convs):
    """While the context is open, the per-tensor weight-quantized convs among ``convs`` whose weights train use
    weights quantized together (one multi-tensor computation per bit-width) instead of one quantization each. Eager mode only: a
    compiled graph fuses each conv's quantization into one kernel anyway."""
    groups = defaultdict(list)
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        for conv in convs:
            if (isinstance(conv, WeightQuantized) and conv.w_channel_dim is None and conv.weight.requires_grad
                    and (conv.training or not conv.int8_kernel)):
                groups[conv.w_bits].append(conv)
    for bits, members in groups.items():
        for conv, weight in zip(members, _QuantizeWeights.apply(bits, *(conv.weight for conv in members))):
            conv.prequantized = weight
    try:
        yield
    finally:
        for members in groups.values():
            for conv in members:
                conv.prequantized = None



class WeightQuantized:
    """What the weight-quantized convs share (mixed into ``nn.Conv2d`` / ``nn.ConvTranspose2d``).

    Parameter names are those of the torch conv, so FP checkpoints load into it unchanged. ``input_quantizer``
    names the activation quantizer that feeds the conv; the BitOPs counter reads its bit-width from there, and
    the int8 backend makes that quantizer emit integer codes. ``int8_kernel`` (set by ``set_backend``) runs the
    conv in eval mode; training always takes the fake-quantized path. A frozen weight (a teacher's) is quantized
    once and reused until it changes, and ``prequantized`` holds the weight quantized with the others of the
    network (:func:`weights_quantized_together`) during a forward pass; both in eager mode only (a compiled graph
    fuses the quantization into one kernel).
    """

    def _init_weight_quant(self, w_bits, per_channel=False):
        self.w_bits = w_bits
        # weight scales per output channel (quantized FP layers) or one per tensor (the CADyQ convs, as the reference)
        self.w_channel_dim = (1 if isinstance(self, nn.ConvTranspose2d) else 0) if per_channel else None
        object.__setattr__(self, 'input_quantizer', None)  # a reference, not a submodule
        self.int8_kernel = None
        self._frozen = (None, None)  # (key, quantized weight) of a weight that needs no gradient
        self.prequantized = None

    def feed_from(self, quantizer):
        """Record which activation quantizer produces this conv's input (used for BitOPs)."""
        object.__setattr__(self, 'input_quantizer', quantizer)
        return self

    def forward(self, x):
        if self.int8_kernel is not None and not self.training:
            return self.int8_kernel(self, x)
        return self.fake_forward(x, self.quantized_weight())

    def quantized_weight(self):
        """``quantize_weight(self.weight, self.w_bits, self.w_channel_dim)``, cached for a weight that needs no
        gradient."""
        if self.prequantized is not None:
            return self.prequantized
        weight = self.weight
        if weight.requires_grad or torch.compiler.is_compiling():
            return quantize_weight(weight, self.w_bits, self.w_channel_dim)
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device, self.w_bits)
        if self._frozen[0] != key:
            self._frozen = (key, quantize_weight(weight, self.w_bits, self.w_channel_dim))
        return self._frozen[1]

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
