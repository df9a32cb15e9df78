"""The CADyQ bit selector (docs/method.md#bit-selector): picks, per sample, the bit-width of one activation quantizer."""
import math

import torch
import torch.nn as nn

from cadyq_plugin.quant.act_quant import PAMSQuant, batch_max_abs, dot_to_shape, levels, quantized_level

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


class _SelectQuantize(torch.autograd.Function):
    """Forward: each sample quantized at its chosen candidate only. Backward: the gradient of the
    probability-weighted mixture ``sum_k p_k Q_k(x)`` (straight-through selection, docs/method.md#bit-selector).

    Both directions share the PAMS expression of :mod:`act_quant`; the mixture is never materialised in the
    forward, so inference and training produce bit-identical outputs and the forward costs one quantization.
    """

    @staticmethod
    def forward(ctx, x, alphas, qs, choice, probs, clip_range):
        shape = (-1,) + (1,) * (x.dim() - 1)
        alpha, q = alphas[choice].view(shape), qs[choice].view(shape)
        y = quantized_level(x, alpha, q, clip_range).mul_(alpha)
        ctx.save_for_backward(x, alphas, qs, probs)
        ctx.clip = clip_range
        return y

    @staticmethod
    def backward(ctx, grad_y):
        """Per candidate k, with per-sample dot products ``<., .>_b`` (no product temporaries):
        dL/dp_k[b] = <g, Q_k>_b; dL/dalpha_k = sum_b p_k[b] (<g, Q_k>_b - <g * [|x| <= a_k], x>_b) / a_k;
        dL/dx = sum_k p_k * g * [|x| <= a_k] (just g without clipping, as sum_k p_k = 1)."""
        x, alphas, qs, probs = ctx.saved_tensors
        batch = (x.shape[0],)
        shape = (-1,) + (1,) * (x.dim() - 1)
        grad_alphas = torch.zeros_like(alphas)
        grad_probs = torch.zeros_like(probs)
        x_abs = x.abs() if ctx.clip else None
        grad_x = torch.zeros_like(x) if ctx.clip else grad_y.clone()
        for k in range(alphas.numel()):
            a, q, p_k = alphas[k], qs[k], probs[:, k]
            q_k = quantized_level(x, a, q, ctx.clip).mul_(a)
            grad_probs[:, k] = dot_to_shape(grad_y, q_k, batch)
            passed = torch.where(x_abs <= a, grad_y, 0.0) if ctx.clip else grad_y
            grad_alphas[k] = (p_k * (grad_probs[:, k] - dot_to_shape(passed, x, batch))).sum() / a
            if ctx.clip:
                grad_x.add_(passed.mul_(p_k.view(shape)))
        return (grad_x if ctx.needs_input_grad[0] else None), grad_alphas, None, None, grad_probs, None


def layer_std(x):
    """Unbiased std over H, W per sample and channel, ``[B, C]`` (two-pass; torch.std is slow on the CPU).

    A channels-last ``x`` (the int8 backend's layout) is reduced as ``[B, H*W, C]`` without a layout copy; the
    result differs from the NCHW reduction only by float round-off.
    """
    x = x.detach()
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        flat = x.permute(0, 2, 3, 1).flatten(1, 2)
        centered = flat - flat.mean(dim=1, keepdim=True)
        return centered.mul_(centered).sum(dim=1).sqrt_() / _sqrt_count(flat.shape[1] - 1)
    flat = x.flatten(2)
    centered = flat - flat.mean(dim=2, keepdim=True)
    return torch.linalg.vector_norm(centered, dim=2) / _sqrt_count(flat.shape[2] - 1)


def _sqrt_count(n):
    """``sqrt(n)`` of a pixel count: a float, or a graph value in an exported graph (where ``n`` is symbolic)."""
    if torch.compiler.is_exporting():
        return torch.scalar_tensor(n, dtype=torch.float32).sqrt()
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
        calibrate = self.training and self.calibrating
        if calibrate:
            max_val = batch_max_abs(x)
            for quantizer in self.quantizers:
                quantizer.max_val.copy_(max_val)
                quantizer.alpha.data.copy_(max_val.reshape(1))
        alphas = torch.cat([quantizer.alpha for quantizer in self.quantizers])
        if self.int8_codes is not None and not self.training:
            shape = (-1,) + (1,) * (x.dim() - 1)
            y = self.int8_codes(x, alphas[choice].view(shape), self.levels[choice].view(shape))
        else:
            y = _SelectQuantize.apply(x, alphas, self.levels, choice, probs, not calibrate)
        expected = probs @ self.bit_values
        chosen = self.bit_values[choice] + (expected - expected.detach())
        record.add(self.index, chosen, expected)
        return y

    def bit_spec(self):
        """How BitOPs counting sees this quantizer: dynamic, one column of the record's bits."""
        return ('dynamic', self.index)

    def extra_repr(self):
        return f'bits={self.bits}, index={self.index}'
