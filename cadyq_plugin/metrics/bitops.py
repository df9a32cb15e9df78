"""BitOPs and FAB (docs/method.md#fab-and-bitops), registered as BasicSR metrics.

A validation forward pass is described by a dict ``{'layers': [LayerCost], 'bits': Tensor[n_selectors]}``;
an image is a list of them (one per patch in patch-wise inference, one for image-wise).
"""
from basicsr.utils.registry import METRIC_REGISTRY

BIT_RECORD_METRICS = ('calculate_avg_bit', 'calculate_bitops')  # they read the bit record of a CADyQ model


def layer_bitops(layer, selector_bits=None, fab=None):
    """FP32-equivalent MACs of one layer: ``MACs * (w_bits / 32) * (a_bits / 32)``, FP layers at full cost.

    A dynamic layer takes its bit-width from ``selector_bits[index]``, or ``fab`` when given.
    """
    if layer.act_kind == 'fp':
        return float(layer.macs)
    if layer.act_kind == 'fixed':
        a_bits = layer.act_bits
    elif fab is not None:
        a_bits = fab
    else:
        a_bits = float(selector_bits[layer.act_bits])
    return layer.macs * (layer.w_bits / 32) * (a_bits / 32)


def forward_bitops(layers, selector_bits=None, fab=None):
    """BitOPs of one forward pass (an image or a patch)."""
    return sum(layer_bitops(layer, selector_bits, fab) for layer in layers)


def bitops_per_bit(layers, n_selectors):
    """``(base, slopes)`` with ``forward_bitops(layers, bits) == base + sum_l slopes[l] * bits[l]``.

    BitOPs are linear in each selector's bit, so a BitOPs budget is a budget on the slope-weighted mean bit; both
    numbers come from :func:`layer_bitops` (no second formula). A selector that feeds no conv has slope 0.
    """
    base = forward_bitops(layers, fab=0.0)
    slopes = [0.0] * n_selectors
    for layer in layers:
        if layer.act_kind == 'dynamic':
            slopes[layer.act_bits] += layer_bitops(layer, fab=1.0)
    return base, slopes


@METRIC_REGISTRY.register()
def calculate_bitops(forwards, **kwargs):
    """BitOPs of one image in G (1e9): the sum over its forward passes, so patch overlap counts."""
    return sum(forward_bitops(f['layers'], f['bits']) for f in forwards) / 1e9


@METRIC_REGISTRY.register()
def calculate_avg_bit(forwards, static_bits=None, **kwargs):
    """FAB of one image: the unweighted mean over its forward passes of the mean chosen bit.

    Args:
        forwards (list[dict]): the image's forward passes.
        static_bits (int | None): bit-width at every selector place of a ``pams`` network (no selectors).
    """
    if forwards and forwards[0]['bits'].numel() == 0:
        if static_bits is None:
            raise ValueError('avg_bit needs a pams or cadyq network: this one has no quantized activations')
        return float(static_bits)
    return sum(float(f['bits'].float().mean()) for f in forwards) / len(forwards)
