"""Builds the quantized pieces of a network for one ``quant_mode`` (docs/method.md#backbones), so each architecture is
written once and gets its fp / pams / cadyq variants with identical parameter names for the shared convs."""
import torch.nn as nn

from cadyq_plugin.quant.act_quant import NoQuant, PAMSQuant
from cadyq_plugin.quant.bit_selector import BitSelector, check_candidate_bits
from cadyq_plugin.quant.fp_layers import InputQuantConv2d, check_fp_layer_bits, quantize_fp_layers
from cadyq_plugin.quant.int8 import Int8ConvKernel, check_backend, quantize_to_codes
from cadyq_plugin.quant.weight_quant import QConv2d, WeightQuantized

QUANT_MODES = ('fp', 'pams', 'cadyq')
FIXED_BITS = (2, 32)  # the range of w_bits and a_bits


class ActQuantFactory:
    """Makes convs and activation quantizers for one quantization mode.

    Args:
        quant_mode (str): ``fp`` (nothing quantized), ``pams`` (fixed ``a_bits`` everywhere a selector would be)
            or ``cadyq`` (bit selectors over ``bits``).
        w_bits (int): weight bit-width of quantized convs.
        a_bits (int): activation bit-width of the pams mode.
        bits (list[int]): candidate bit-widths of the cadyq mode.
        fp_layer_bits (int | None): in the quantized modes, the fixed bit-width of the weights and inputs of the
            convs outside the CADyQ set (:mod:`fp_layers`); None keeps them full precision (the reference).
    """

    def __init__(self, quant_mode='cadyq', w_bits=8, a_bits=8, bits=(4, 6, 8), fp_layer_bits=None):
        if quant_mode not in QUANT_MODES:
            raise ValueError(f'quant_mode must be one of {QUANT_MODES}, got {quant_mode!r}')
        for name, value in (('w_bits', w_bits), ('a_bits', a_bits)):
            if isinstance(value, bool) or not isinstance(value, int) or not FIXED_BITS[0] <= value <= FIXED_BITS[1]:
                raise ValueError(f'{name} must be an integer in {FIXED_BITS[0]}..{FIXED_BITS[1]}, got {value!r}')
        self.mode = quant_mode
        self.w_bits = w_bits
        self.a_bits = a_bits
        self.bits = check_candidate_bits(list(bits))
        self.fp_layer_bits = check_fp_layer_bits(fp_layer_bits)

    @property
    def quantized(self):
        return self.mode != 'fp'

    def dynamic(self, channels):
        """A place where CADyQ puts a bit selector ("BS" in docs/method.md#backbones)."""
        if self.mode == 'fp':
            return NoQuant()
        if self.mode == 'pams':
            return PAMSQuant(self.a_bits)
        return BitSelector(channels, self.bits)

    def fixed(self, bits=8):
        """A fixed-bit quantizer that stays in both quantized modes ("A8" in docs/method.md#backbones)."""
        return NoQuant() if self.mode == 'fp' else PAMSQuant(bits)

    def conv(self, in_channels, out_channels, kernel_size, feed_from=None, **kwargs):
        """A conv that is weight-quantized in the quantized modes; ``feed_from`` is its input quantizer."""
        if self.mode == 'fp':
            return nn.Conv2d(in_channels, out_channels, kernel_size, **kwargs)
        conv = QConv2d(in_channels, out_channels, kernel_size, w_bits=self.w_bits, **kwargs)
        if feed_from is None:
            raise ValueError('a quantized conv needs the activation quantizer that feeds it (feed_from)')
        return conv.feed_from(feed_from)

    def conv_on_raw_input(self, in_channels, out_channels, kernel_size, counted_as, **kwargs):
        """A weight-quantized conv whose input no quantizer sees (SRResNet's ``conv1``, a reference quirk). With
        ``fp_layer_bits`` its input gets a fixed quantizer of its own (it runs in integers); otherwise it is
        counted in BitOPs at the bits of ``counted_as`` (the paper's accounting)."""
        if self.mode == 'fp' or self.fp_layer_bits is None:
            return self.conv(in_channels, out_channels, kernel_size, feed_from=counted_as, **kwargs)
        return InputQuantConv2d(in_channels, out_channels, kernel_size, w_bits=self.w_bits, a_bits=self.fp_layer_bits,
                                **kwargs)

    def quantize_fp_layers(self, net, keep=()):
        """With ``fp_layer_bits`` in a quantized mode, make every remaining FP conv of ``net`` (outside ``keep``)
        an input-quantized conv (:func:`~cadyq_plugin.quant.fp_layers.quantize_fp_layers`); returns their names."""
        if self.mode == 'fp' or self.fp_layer_bits is None:
            return []
        return quantize_fp_layers(net, self.fp_layer_bits, keep)


def assign_selector_indices(net):
    """Number the bit selectors of ``net`` in registration order (which every arch keeps = forward order)."""
    selectors = [m for m in net.modules() if isinstance(m, BitSelector)]
    for index, selector in enumerate(selectors):
        selector.index = index
    return len(selectors)


def set_calibration(net, on):
    """Switch PAMS calibration (docs/method.md#quantizers) on or off for every activation quantizer of ``net``."""
    for module in net.modules():
        if isinstance(module, (PAMSQuant, BitSelector)):
            module.calibrating = bool(on)


def set_backend(net, backend):
    """Choose how the quantized convs of ``net`` execute in eval mode: ``fake`` (float simulation) or ``int8``
    (integer convolutions, same results). Works on any network whose weight-quantized convs name their input
    quantizer (``feed_from``): those quantizers, and every fixed quantizer of at most 8 bits, emit integer codes
    (a fixed quantizer after an integer conv gets them from the conv itself); every other module is left as it
    is."""
    check_backend(backend)
    for module in net.modules():
        if isinstance(module, (PAMSQuant, BitSelector)):
            module.int8_codes = None
        if backend == 'int8' and isinstance(module, PAMSQuant) and module.bits <= 8:
            module.int8_codes = quantize_to_codes
    for name, module in net.named_modules():
        if not isinstance(module, WeightQuantized):
            continue
        module.int8_kernel = Int8ConvKernel() if backend == 'int8' else None
        quantizer = module.input_quantizer
        if backend == 'int8' and isinstance(quantizer, (PAMSQuant, BitSelector)):
            bits = max(quantizer.bits) if isinstance(quantizer, BitSelector) else quantizer.bits
            if module.w_bits > 8 or bits > 8:
                raise ValueError(f'backend int8: {name} has w_bits={module.w_bits} and input bits up to {bits}; '
                                 'both must be <= 8')
            quantizer.int8_codes = quantize_to_codes
