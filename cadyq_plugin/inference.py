"""Inference of one LR image by a CADyQ network, image-wise or patch-wise (``docs/method.md#patch-wise-inference``),
with what every forward pass chose: the one implementation behind validation, ``basicsr test``, ``basicsr infer``
and the benchmark."""
from typing import Any, Dict, List, NamedTuple, Optional

import torch

from cadyq_plugin.data.patches import Box, forward_patchwise

OPTION_KEYS = {'val.patchwise': ('patch', 'step', 'batch')}  # what super_resolve reads of ``val.patchwise``


class Inference(NamedTuple):
    """``output`` [1, C, H*s, W*s]; ``forwards``: one ``{'layers': MAC table or None, 'bits': [n_selectors]}``
    per forward pass (the whole image, or each patch); ``regions``: the HR box each forward pass fills."""
    output: torch.Tensor
    forwards: List[Dict[str, Any]]
    regions: List[Box]


def super_resolve(net, lq, patchwise: Optional[dict] = None, mac_counter=None) -> Inference:
    """Run ``net`` (in the mode the caller set, normally eval) on ``lq`` [1, C, H, W] without gradients. A network
    that is not a CADyQ arch is treated as full precision (no selectors: empty bits).

    Args:
        patchwise: ``{patch, step, batch}`` (LR pixels, patches per forward) or None for one forward pass.
        mac_counter: a :class:`~cadyq_plugin.metrics.MACCounter` of ``net``, so each forward pass carries its
            MAC table (for BitOPs); None leaves ``layers`` None.
    """

    reports_bits = hasattr(net, 'n_selectors')  # a CADyQ arch: forward(x, return_aux=True) gives the bits

    def forward(lr_batch):
        if reports_bits:
            sr, aux = net(lr_batch, return_aux=True)
            bits = aux['bits'].cpu()
        else:  # any other arch: full precision, no selectors
            sr, bits = net(lr_batch), torch.zeros(lr_batch.shape[0], 0)
        layers = mac_counter(lr_batch.shape[2], lr_batch.shape[3]) if mac_counter is not None else None
        return sr, [{'layers': layers, 'bits': b} for b in bits]

    with torch.no_grad():
        if not patchwise:
            sr, forwards = forward(lq)
            return Inference(sr, forwards, [(0, sr.shape[2], 0, sr.shape[3])])
        stitched = forward_patchwise(forward, lq, patchwise['patch'], patchwise['step'], net.upscale,
                                     patchwise.get('batch', 1))
        return Inference(stitched.image, stitched.extras, stitched.regions)
