"""PAMS activation quantization (docs/method.md#quantizers): a learnable symmetric clipping range ``alpha`` per quantizer.

The arithmetic of both quantizer kinds lives here, once: :func:`pams_quantize` quantizes with one candidate
range (the fixed-bit :class:`PAMSQuant`) or with each sample's chosen candidate among K (the bit selector), and
its backward computes the PAMS range gradients of all candidates in one reduction; :func:`calibrate` is the
calibration of both kinds. The forward keeps the reference's operation order (``x / alpha * q``, round,
``/ q * alpha``); the backward is analytic, which saves the intermediate tensors autograd would keep.
"""
import torch
import torch.nn as nn


def levels(bits):
    """Largest quantization level of a symmetric ``bits``-bit quantizer: 4 -> 7, 6 -> 31, 8 -> 127."""
    return 2**(bits - 1) - 1


def rounded_level(x, alpha, q, clip_range=True):
    """``round(clamp(x, -alpha, alpha) / alpha * q)`` in a new tensor: the integer level ``-q..q`` of the
    quantized value ``level / q * alpha``, as float (``alpha`` a tensor, ``q`` a number or a tensor, both
    broadcasting against ``x``).

    Computed as ``round(clamp(x / alpha, -1, 1) * q)``, which is the same number for every ``x``: where
    ``|x| <= alpha`` the two compute ``x / alpha`` alike, and beyond the range ``x / alpha`` rounds to at least 1
    in magnitude (float division is monotonic and ``alpha / alpha`` is exactly 1), which the clamp makes 1, as
    ``alpha / alpha`` does in the reference. Clamping to +-1 needs no bounds from the tensor, whatever the
    per-sample ranges, so the quantizer is a handful of fast operations on one buffer. The int8 backend turns
    these levels into integer codes, so both backends round every value identically.
    """
    level = x / alpha
    if clip_range:
        level.clamp_(-1.0, 1.0)
    return level.mul_(q).round_()


def quantized_value(x, alpha, q, clip_range=True):
    """The PAMS quantization ``rounded_level(...) / q * alpha``, without gradient."""
    return rounded_level(x, alpha, q, clip_range).div_(q).mul_(alpha)


def chosen_value(x, alphas, qs, choice, clip_range):
    """``x`` quantized by its candidate: the one (``choice`` None), or each sample's ``choice[b]`` among K."""
    if choice is None:
        return quantized_value(x, alphas, qs, clip_range)
    shape = (-1, ) + (1, ) * (x.dim() - 1)
    return quantized_value(x, alphas[choice].view(shape), qs[choice].view(shape), clip_range)


class _PAMSQuantize(torch.autograd.Function):
    """``y = round(clamp(x, -a, a) / a * q) / q * a`` with a straight-through round, where ``a, q`` are the one
    candidate's (``choice`` None) or each sample's chosen candidate ``choice[b]`` among K.

    The gradient is that of the probability-weighted mixture ``sum_k p_k Q_k(x)`` (docs/method.md#bit-selector; ``p = 1`` for one
    candidate), with the PAMS derivatives of each candidate (autograd on the formula, identity round):
    ``dQ_k/dx = [|x| <= a_k]`` (1 without clipping) and ``dQ_k/da_k = (Q_k - x [|x| <= a_k]) / a_k``, which is
    ``(E_k + x [|x| > a_k]) / a_k`` with the quantization error ``E_k = Q_k - x``. One reduction over the stacked
    candidates gives the per-sample sums ``G[k, b] = <g, E_k>_b`` and ``O[k, b] = <g x, [|x| > a_k]>_b``:
    ``dL/da_k = sum_b p_k[b] (G + O)[k, b] / a_k``, ``dL/dx = g sum_k p_k [|x| <= a_k]``, and ``G`` is the gradient
    of the probabilities. It differs from ``<g, Q_k>_b`` by ``<g, x>_b``, the same for every candidate, which the
    softmax that makes ``p`` cancels exactly (its gradient ignores a per-sample constant); sums of the small
    errors ``E_k`` keep the digits that ``<g, Q_k>_b - <g, Q_j>_b`` would lose, so the selector's and the ranges'
    gradients do not depend on the order of float summation. With one candidate ``Q_0`` is the output itself
    (saved, not recomputed); the forward never builds the mixture, so training and inference outputs are
    bit-identical.
    """

    @staticmethod
    def forward(ctx, x, alphas, qs, choice, probs, clip_range):
        y = chosen_value(x, alphas, qs, choice, clip_range)
        ctx.save_for_backward(x, alphas, qs if isinstance(qs, torch.Tensor) else None, probs,
                              y if choice is None else None)
        ctx.clip = clip_range
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, alphas, qs, probs, y = ctx.saved_tensors
        grad_x, grad_alphas, grad_probs = mixture_gradients(grad_y, x, alphas, qs, probs, y, ctx.clip)
        return grad_x, grad_alphas, None, None, grad_probs, None


def mixture_gradients(grad_y, x, alphas, qs, probs, y, clip_range):
    """The gradient of the PAMS mixture (see :class:`_PAMSQuantize`), the one implementation of the PAMS range
    gradient: ``(dL/dx, dL/dalphas [K], dL/dprobs [B, K] up to a per-sample constant, or None without probs)``.
    ``y`` is the output when there is one candidate (then ``Q_0``), else None (the K candidates are recomputed)."""
    if y is None:  # K candidates: stacked along a new first dimension, [K, B, ...]
        alpha = alphas.view((-1, ) + (1, ) * x.dim())
        errors = quantized_value(x, alpha, qs.view(alpha.shape), clip_range).sub_(x)
    else:  # one candidate, the output itself: [B, ...]
        alpha, errors = alphas, y - x
    per_sample = tuple(range(errors.dim() - x.dim() + 1, errors.dim()))  # the dimensions after B
    g_errors = errors.mul_(grad_y).sum(dim=per_sample)  # G: [K, B], or [B]
    range_terms = g_errors
    grad_x = grad_y
    if clip_range:
        outside = x.abs() > alpha
        range_terms = g_errors + (outside * (grad_y * x)).sum(dim=per_sample)
        if probs is None:
            grad_x = grad_y.masked_fill(outside, 0.0)
        else:
            weights = probs.t()  # [K, B]
            inside = outside.logical_not_() * weights.reshape(weights.shape + (1, ) * (x.dim() - 1))
            grad_x = inside.sum(dim=0).mul_(grad_y)
            range_terms = range_terms.mul_(weights)
    elif probs is not None:
        range_terms = range_terms * probs.t()
    grad_alphas = range_terms.sum(dim=-1) / alphas
    return grad_x, grad_alphas, (g_errors.t() if probs is not None else None)


def pams_quantize(x, alphas, qs, clip_range=True, choice=None, probs=None):
    """PAMS quantization of ``x`` [B, ...] (see :class:`_PAMSQuantize`).

    Args:
        alphas (Tensor): the candidates' ranges, ``[K]`` (``[1]`` for one candidate).
        qs (Tensor | float): their largest levels, ``[K]``; a number for one candidate.
        clip_range (bool): clip to ``[-alpha, alpha]`` (off while calibrating).
        choice (Tensor | None): ``[B]`` each sample's candidate; None: the one candidate for every sample.
        probs (Tensor | None): ``[B, K]`` selection probabilities (their gradient is returned), with ``choice``.
    """
    if not torch.is_grad_enabled():  # inference, a teacher: the forward arithmetic alone
        return chosen_value(x, alphas, qs, choice, clip_range)
    return _PAMSQuantize.apply(x, alphas, qs, choice, probs, clip_range)


def batch_max_abs(x):
    """Calibration statistic: mean over the batch of each sample's ``max |x|``."""
    return torch.linalg.vector_norm(x.detach().flatten(1), ord=float('inf'), dim=1).mean()


def calibrate(quantizers, x):
    """PAMS calibration of ``quantizers`` (every candidate of a selector, or one fixed quantizer) on ``x``:
    ``alpha`` and ``max_val`` become the batch mean of the per-sample maximum of ``|x|``. In eager mode the range
    is written through ``.data``, unseen by autograd: in a DataParallel replica ``alpha`` is one of several views
    its broadcast returns, which autograd forbids writing in place (a compiled network never runs in one)."""
    max_val = batch_max_abs(x)
    with torch.no_grad():
        for quantizer in quantizers:
            quantizer.max_val.copy_(max_val)
            alpha = quantizer.alpha if torch.compiler.is_compiling() else quantizer.alpha.data
            alpha.copy_(max_val.reshape(1))


class PAMSQuant(nn.Module):
    """Fixed-bit PAMS activation quantizer with a learnable range ``alpha`` (init 10) and ``max_val``.

    While ``calibrating`` (set by the model for the first ``calib_iters`` training iterations) it does not clip:
    ``alpha`` is set by :func:`calibrate` and used as the quantization scale. ``int8_codes`` (set by the int8
    backend on quantizers that feed a conv) replaces the float output in eval mode by integer codes,
    ``int8_codes(x, alpha, q)``.
    """

    def __init__(self, bits=8, alpha_init=10.0):
        super().__init__()
        self.bits = bits
        self.alpha = nn.Parameter(torch.tensor([float(alpha_init)]))
        self.register_buffer('max_val', torch.tensor(1.0))
        self.register_buffer('q', torch.tensor(float(levels(bits))), persistent=False)
        self.calibrating = False
        self.int8_codes = None

    def forward(self, x, record=None):
        if self.int8_codes is not None and not self.training:
            return self.int8_codes(x, self.alpha, self.q)
        calibrating = self.training and self.calibrating
        if calibrating:
            calibrate([self], x)
        return pams_quantize(x, self.alpha, float(levels(self.bits)), clip_range=not calibrating)

    def bit_spec(self):
        """How BitOPs counting sees this quantizer: a fixed bit-width."""
        return ('fixed', self.bits)

    def extra_repr(self):
        return f'bits={self.bits}'


class NoQuant(nn.Module):
    """Full-precision stand-in with the quantizers' call signature (used by ``quant_mode: fp``)."""

    def forward(self, x, record=None):
        return x

    def bit_spec(self):
        return ('fp', 32)
