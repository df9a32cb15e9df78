"""PAMS activation quantization (docs/method.md#quantizers): a learnable symmetric clipping range ``alpha`` per quantizer.

The arithmetic lives in one autograd function, :func:`pams_quantize`, shared by the fixed-bit quantizer below
and by the bit selector. It keeps the reference's operation order in the forward (``c / alpha * q``, round,
``/ q * alpha``) and computes the PAMS gradients analytically in the backward, which saves the intermediate
tensors autograd would keep (about half the memory and time of the composed expression).
"""
import math

import torch
import torch.nn as nn


def levels(bits):
    """Largest quantization level of a symmetric ``bits``-bit quantizer: 4 -> 7, 6 -> 31, 8 -> 127."""
    return 2**(bits - 1) - 1


def rounded_level(x, alpha, q, clip_range=True):
    """``round(clamp(x, -alpha, alpha) / alpha * q)`` in a new tensor (``x`` is left alone): the integer level
    ``-q..q`` of the quantized value ``level / q * alpha``, as float.

    The reference's operation order, computed in place on one buffer: on the CPU every large allocation costs
    about as much as the arithmetic, so one buffer instead of six makes the quantizer several times faster.
    The int8 backend turns these levels into integer codes, so both backends round every value identically.
    """
    if clip_range:
        level = clip(x, alpha).div_(alpha)
    else:
        level = x / alpha
    return level.mul_(q).round_()


def clip(x, alpha):
    """``clamp(x, -alpha, alpha)`` in a new tensor, ``alpha`` of one element or one per sample (exact either way).

    On the CPU a clamp to scalar bounds (per sample) is several times faster than max/min against a tensor;
    elsewhere, and in an exported graph (where ``alpha`` is not a number), max/min against ``alpha`` itself.
    """
    if x.device.type != 'cpu' or torch.compiler.is_exporting():
        level = torch.maximum(x, -alpha)
        return torch.minimum(level, alpha, out=level)
    bounds = alpha.detach().reshape(-1).tolist()
    if len(bounds) == 1:
        return torch.clamp(x, -bounds[0], bounds[0])
    level = torch.empty_like(x)
    for sample, bound in enumerate(bounds):
        torch.clamp(x[sample], -bound, bound, out=level[sample])
    return level


def quantized_level(x, alpha, q, clip_range=True):
    """``rounded_level(...) / q`` in a new tensor; the quantized value is ``level * alpha``."""
    return rounded_level(x, alpha, q, clip_range).div_(q)


class _PAMSQuantize(torch.autograd.Function):
    """y = round(clamp(x, -a, a) / a * q) / q * a, with straight-through rounding.

    ``alpha`` and ``q`` broadcast against ``x`` (scalars, or per-sample ``[B, 1, 1, 1]``).
    Gradients (autograd on the expression with an identity round):
      dy/dx = 1 inside [-a, a], 0 outside (always 1 without clipping);
      dy/da = round(u) / q - x / a = (y - x) / a inside, sign(x) = y / a outside,
    so ``dL/da = (sum(g * y) - sum(dL/dx * x)) / a``: two dot products, no temporary tensors.
    The backward reuses the saved output (the next conv keeps that tensor anyway, so saving it costs no memory).
    """

    @staticmethod
    def forward(ctx, x, alpha, q, clip_range):
        y = quantized_level(x, alpha, q, clip_range).mul_(alpha)
        ctx.save_for_backward(x, alpha, y)
        ctx.clip = clip_range
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, alpha, y = ctx.saved_tensors
        grad_x = torch.where(x.abs() <= alpha, grad_y, 0.0) if ctx.clip else grad_y
        grad_alpha = None
        if ctx.needs_input_grad[1]:
            grad_alpha = (dot_to_shape(grad_y, y, alpha.shape) - dot_to_shape(grad_x, x, alpha.shape)) / alpha
        return (grad_x if ctx.needs_input_grad[0] else None), grad_alpha, None, None


def dot_to_shape(a, b, shape):
    """``sum(a * b)`` reduced to ``shape``: one scalar (``torch.dot``, no temporary), or one per sample (a
    multiply-and-sum: batched matmul is far slower for this shape on the CPU)."""
    if math.prod(shape) == 1:
        return torch.dot(a.reshape(-1), b.reshape(-1)).reshape(shape)
    return (a * b).reshape(a.shape[0], -1).sum(dim=1).reshape(shape)


def pams_quantize(x, alpha, q, clip_range=True):
    """PAMS quantization of ``x`` with range ``alpha`` (tensor) and ``q`` levels (tensor, same device)."""
    return _PAMSQuantize.apply(x, alpha, q, clip_range)


def batch_max_abs(x):
    """Calibration statistic: mean over the batch of each sample's ``max |x|``."""
    return x.detach().abs().flatten(1).max(dim=1).values.mean()


class PAMSQuant(nn.Module):
    """Fixed-bit PAMS activation quantizer with a learnable range ``alpha`` (init 10) and ``max_val``.

    While ``calibrating`` (set by the model for the first ``calib_iters`` training iterations) it does not clip:
    ``alpha`` is set to the batch-mean of the per-sample maximum of ``|x|`` and used as the quantization scale.
    ``int8_codes`` (set by the int8 backend on quantizers that feed a conv) replaces the float output in eval
    mode by integer codes, ``int8_codes(x, alpha, q)``.
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
        calibrate = self.training and self.calibrating
        if calibrate:
            self.max_val.copy_(batch_max_abs(x))
            self.alpha.data.copy_(self.max_val.reshape(1))
        return pams_quantize(x, self.alpha, self.q, clip_range=not calibrate)

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
