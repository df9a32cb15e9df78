"""The CADyQ bit selector (docs/method.md#bit-selector): picks, per sample, the bit-width of one activation quantizer."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from cadyq_plugin.quant.act_quant import PAMSQuant, calibrate, chosen_value, levels, mixture_gradients

CANDIDATE_BITS = (2, 8)  # the lowest and highest candidate bit-width a selector may hold


def check_candidate_bits(bits):
    """Validate a candidate list: sorted, distinct integers in 2..8, at least two of them."""
    low, high = CANDIDATE_BITS
    values = list(bits) if isinstance(bits, (list, tuple)) else None
    if (values is None or len(values) < 2 or any(isinstance(b, bool) or not isinstance(b, int) for b in values)
            or any(not low <= b <= high for b in values) or values != sorted(set(values))):
        raise ValueError(f'candidate bits must be a sorted list of at least 2 distinct integers in {low}..{high}, '
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


def select(x, feature, weight, bias):
    """The selector's choice: ``(inputs, probs, choice)`` for the linear layer's ``inputs = [feature, std(x)]``."""
    inputs = torch.cat([feature, layer_std(x)], dim=1)
    logits = F.linear(inputs, weight, bias)
    return inputs, torch.softmax(logits, dim=1), logits.argmax(dim=1)


class _SelectAndQuantize(torch.autograd.Function):
    """A whole bit selector as one autograd node: layer statistic, linear layer, softmax and argmax, and each
    sample quantized by its chosen candidate; the backward is the PAMS mixture's (:func:`mixture_gradients`, all K
    candidates in one reduction) followed by the softmax's and the linear layer's. One node instead of a dozen
    keeps the selector at a few dozen operations per step, forward and backward, whatever K.

    Outputs ``(y, probs, choice)``; ``probs`` also receives the gradient of the bits computed from it."""

    @staticmethod
    def forward(ctx, x, feature, weight, bias, qs, clip_range, *alphas):
        inputs, probs, choice = select(x, feature, weight, bias)
        alphas = torch.cat(alphas)
        y = chosen_value(x, alphas, qs, choice, clip_range)
        ctx.save_for_backward(x, inputs, alphas, qs, probs)
        ctx.clip = clip_range
        ctx.mark_non_differentiable(choice)
        ctx.set_materialize_grads(False)  # no zero tensors for outputs without gradient (choice, unused bits)
        return y, probs, choice

    @staticmethod
    def backward(ctx, grad_y, grad_probs, grad_choice):
        x, inputs, alphas, qs, probs = ctx.saved_tensors
        if grad_y is None:
            grad_y = torch.zeros_like(x)
        grad_x, grad_alphas, grad_mixture = mixture_gradients(grad_y, x, alphas, qs, probs, None, ctx.clip)
        if grad_probs is not None:
            grad_mixture = grad_mixture + grad_probs
        grad_logits = torch.ops.aten._softmax_backward_data(grad_mixture, probs, 1, probs.dtype)
        return (grad_x, None, grad_logits.t().mm(inputs), grad_logits.sum(dim=0), None, None,
                *grad_alphas.split(1))


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
        calibrating = self.training and self.calibrating
        if calibrating:
            calibrate(self.quantizers, x)
        int8 = self.int8_codes is not None and not self.training
        if torch.is_grad_enabled() and not int8:
            y, probs, choice = _SelectAndQuantize.apply(x, record.image_feature, self.fc.weight, self.fc.bias,
                                                        self.levels, not calibrating,
                                                        *(quantizer.alpha for quantizer in self.quantizers))
        else:
            _, probs, choice = select(x, record.image_feature, self.fc.weight, self.fc.bias)
            alphas = torch.cat([quantizer.alpha for quantizer in self.quantizers])
            if int8:
                shape = (-1, ) + (1, ) * (x.dim() - 1)
                y = self.int8_codes(x, alphas[choice].view(shape), self.levels[choice].view(shape))
            else:
                y = chosen_value(x, alphas, self.levels, choice, not calibrating)
        record.add(self.index, choice, probs, self.bit_values)
        return y

    def bit_spec(self):
        """How BitOPs counting sees this quantizer: dynamic, one column of the record's bits."""
        return ('dynamic', self.index)

    def extra_repr(self):
        return f'bits={self.bits}, index={self.index}'
