"""Per-layer multiply-accumulate counts read off the real module shapes (docs/method.md#fab-and-bitops).

The network runs once on the ``meta`` device (shapes only, no arithmetic) with hooks on every convolution and
linear layer (a transformer backbone's projections and MLPs; the bit selectors' own linears are not counted, as
in the reference figures); each layer's entry also says how its input is quantized, taken from the quantizer
that feeds it. Products of two activations (attention's ``q @ k``) are not layers and are not counted.
"""
import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from cadyq_plugin.quant import BitSelector, set_backend


@dataclass(frozen=True)
class LayerCost:
    """One convolution: its MACs for one forward pass and how BitOPs weighs them.

    ``act_kind`` is ``fp`` (FP layer), ``fixed`` (``act_bits`` is a fixed bit-width) or ``dynamic``
    (``act_bits`` is the index of the bit selector whose choice sets the bit-width).
    """
    name: str
    macs: int
    w_bits: int
    act_kind: str
    act_bits: int


def _layer_macs(module, inputs, output):
    if isinstance(module, nn.Linear):  # every leading dimension is rows (window attention folds windows into it)
        return output.numel() * module.in_features
    if isinstance(module, nn.ConvTranspose2d):
        per_pixel = module.out_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        return inputs[0][0, 0].numel() * module.in_channels * per_pixel
    per_pixel = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
    return output[0].numel() * per_pixel


def count_layer_macs(net, lr_height, lr_width, in_channels=3):
    """MACs of every conv and linear layer of ``net`` for one ``[1, in_channels, lr_height, lr_width]`` input."""
    meta_net = copy.deepcopy(net).to('meta').eval()
    set_backend(meta_net, 'fake')  # shapes only: the int8 backend's integer convs do not run on 'meta'
    selector_fcs = {id(m.fc) for m in meta_net.modules() if isinstance(m, BitSelector)}
    layers = []

    def hook(name):

        def record(module, inputs, output):
            quantizer = getattr(module, 'input_quantizer', None)
            w_bits = getattr(module, 'w_bits', 32)
            kind, bits = quantizer.bit_spec() if quantizer is not None else ('fp', 32)
            if kind == 'fp':
                w_bits = 32
            layers.append(LayerCost(name, _layer_macs(module, inputs, output), w_bits, kind, bits))

        return record

    handles = [
        module.register_forward_hook(hook(name)) for name, module in meta_net.named_modules()
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) and id(module) not in selector_fcs
    ]
    try:
        with torch.no_grad():
            meta_net(torch.empty(1, in_channels, lr_height, lr_width, device='meta'))
    finally:
        for handle in handles:
            handle.remove()
    return layers


class MACCounter:
    """Caches :func:`count_layer_macs` per input size (patch-wise inference sees a few sizes many times)."""

    def __init__(self, net):
        self.net = net
        self._tables = {}

    def __call__(self, lr_height, lr_width):
        key = (lr_height, lr_width)
        if key not in self._tables:
            self._tables[key] = count_layer_macs(self.net, lr_height, lr_width)
        return self._tables[key]
