"""Quantized FP layers (the ``fp_layer_bits`` option): the convs that CADyQ leaves in full precision (head,
upsampler, tail, fusions, ...) quantized at a fixed bit-width, weights and input, so that a network can run in
integers from end to end.

Each such conv owns the fixed PAMS quantizer of its input (``<conv>.quant_in``, calibrated and trained like every
other PAMS range) and quantizes its weights with one scale per output channel, so the conv keeps its name and
parameters: a checkpoint of the reference network loads into it,
with only the new ranges missing. The selectors and the average bit are untouched; BitOPs count these layers at
``fp_layer_bits`` x ``fp_layer_bits``.
"""
import torch.nn as nn

from cadyq_plugin.quant.act_quant import PAMSQuant
from cadyq_plugin.quant.weight_quant import QConv2d, QConvTranspose2d, WeightQuantized

FP_LAYER_BITS = (2, 8)  # the range of fp_layer_bits


def check_fp_layer_bits(bits):
    """``None`` (FP layers stay full precision) or an integer in 2..8."""
    low, high = FP_LAYER_BITS
    if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or not low <= bits <= high):
        raise ValueError(f'fp_layer_bits must be null (FP layers stay full precision) or an integer in {low}..{high}, '
                         f'got {bits!r}')
    return bits


class _QuantizesItsInput:
    """A weight-quantized conv with a fixed quantizer of its own on its input (``quant_in``)."""

    def _init_input_quant(self, a_bits):
        self.quant_in = PAMSQuant(a_bits)
        self.feed_from(self.quant_in)

    def forward(self, x):
        return super().forward(self.quant_in(x))


class InputQuantConv2d(_QuantizesItsInput, QConv2d):
    """A :class:`QConv2d` (``w_bits``, scales per output channel if ``per_channel``) whose input is quantized by
    its own ``a_bits`` PAMS quantizer."""

    def __init__(self, *args, w_bits=8, a_bits=8, per_channel=False, **kwargs):
        super().__init__(*args, w_bits=w_bits, per_channel=per_channel, **kwargs)
        self._init_input_quant(a_bits)


class InputQuantConvTranspose2d(_QuantizesItsInput, QConvTranspose2d):
    """A :class:`QConvTranspose2d` (``w_bits``, scales per output channel if ``per_channel``) whose input is
    quantized by its own ``a_bits`` PAMS quantizer."""

    def __init__(self, *args, w_bits=8, a_bits=8, per_channel=False, **kwargs):
        super().__init__(*args, w_bits=w_bits, per_channel=per_channel, **kwargs)
        self._init_input_quant(a_bits)


QUANTIZED_FP_LAYERS = (InputQuantConv2d, InputQuantConvTranspose2d)


def _input_quantized(conv, bits):
    """The input-quantized version of a plain conv, holding the same parameter objects; its weight scales are per
    output channel (where a transposed conv's groups allow), which keeps 8-bit head and tail weights as accurate as
    their float originals on the trained networks (one scale per tensor lost up to 0.07 dB there)."""
    per_channel = not isinstance(conv, nn.ConvTranspose2d) or conv.groups == 1
    common = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                  bias=conv.bias is not None, padding_mode=conv.padding_mode, w_bits=bits, a_bits=bits,
                  per_channel=per_channel, device='meta')
    if isinstance(conv, nn.ConvTranspose2d):
        new = InputQuantConvTranspose2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                                        output_padding=conv.output_padding, **common)
    else:
        new = InputQuantConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, **common)
    new.weight, new.bias = conv.weight, conv.bias
    new.quant_in.to(conv.weight.device)
    return new.train(conv.training)


def fp_convs(net, keep=()):
    """Names of the plain ``nn.Conv2d`` / ``nn.ConvTranspose2d`` of ``net`` (the FP layers), in registration
    order, leaving out weight-quantized convs and everything at or under a name in ``keep``."""
    kept = tuple(keep)
    return [name for name, module in net.named_modules()
            if type(module) in (nn.Conv2d, nn.ConvTranspose2d) and not isinstance(module, WeightQuantized)
            and not any(name == k or name.startswith(k + '.') for k in kept)]


def quantize_fp_layers(net, bits, keep=()):
    """Replace every FP conv of ``net`` (see :func:`fp_convs`) in place by its ``bits``-bit input-quantized
    version (same parameters, same names); returns the replaced names."""
    names = fp_convs(net, keep)
    for name in names:
        parent, _, leaf = name.rpartition('.')
        owner = net.get_submodule(parent)
        setattr(owner, leaf, _input_quantized(owner.get_submodule(leaf), bits))
    return names
