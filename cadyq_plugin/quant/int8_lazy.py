"""The activations of the int8 backend: tensors that hold integers, or a convolution not computed yet, and turn
into their float value only when something needs it.

* :class:`QuantizedActivation`: a quantizer's output as uint8 codes (level + 128) with its ``alpha`` and ``q``.
  An integer conv reads the codes; anything else reads the float value ``level / q * alpha``, computed on first
  use in the fake quantizer's operation order.
* :class:`ConvOutput`: the float output of an integer convolution (one scale for the batch), kept as the call
  that computes it. Elementwise operations after it (ReLU, LeakyReLU, a one-parameter PReLU, a multiplication by a
  number, an eval-mode BatchNorm) and pixel shuffles are recorded instead of run. When a fixed 8-bit quantizer
  reads it (:meth:`ConvOutput.codes`), the convolution writes the quantizer's uint8 codes directly (the
  requantization, clipping and ReLU run inside oneDNN) and the pixel shuffles move codes, not floats; anything
  else gets the float value, with the scalings folded into the convolution's output scales and a ReLU run as
  its post-op.

Both are ``torch.Tensor`` subclasses (``__torch_dispatch__``), so the networks' own Python code runs unchanged;
only eval-mode inference of the int8 backend creates them.
"""
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_map

ZERO_POINT = 128
# A float32 integer in [2^23, 2^24) has that integer in the low bits of its representation: MAGIC + level,
# |level| <= 127, has level + 128 in its lowest byte, and adding MAGIC rounds half to even like torch.round
MAGIC = 1.5 * 2**23 + ZERO_POINT
_aten = torch.ops.aten


class LazyActivation(torch.Tensor):
    """Base of the int8 backend's activations: a float32 tensor to every operation, whose value is made by
    :meth:`value` on first use."""

    @staticmethod
    def _wrap(cls, shape, device):
        shape = tuple(shape)
        return torch.Tensor._make_wrapper_subclass(cls, shape, strides=_channels_last_strides(shape),
                                                   dtype=torch.float32, device=device)

    def value(self):
        raise NotImplementedError

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        unwrap = lambda t: t.value() if isinstance(t, LazyActivation) else t  # noqa: E731
        return func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs or {}))


def _channels_last_strides(shape):
    if len(shape) != 4:
        return torch.empty(0).new_empty(shape).stride()
    _, c, h, w = shape
    return (h * w * c, 1, w * c, c)


@torch.no_grad()  # codes have no gradient; an eval forward with grad enabled still runs
def round_to_codes(x, alpha, q):
    """``round(clamp(x, -alpha, alpha) / alpha * q) + 128`` as uint8 codes, in a few passes: ``x / alpha * q`` in the
    fake path's order, rounded by adding :data:`MAGIC`, clamped after rounding (the same levels as clamping before:
    the map is monotonic and ``alpha`` maps to ``q``), and the low byte of each float taken as the code.

    ``alpha`` and ``q`` have one element or one per sample. Returns ``(codes, shifted)``, ``shifted`` being the
    float buffer ``MAGIC + level`` from which the levels are exact.
    """
    alphas, qs = alpha.detach().reshape(-1).tolist(), q.reshape(-1).tolist()
    shifted = torch.empty_like(x)
    samples = range(x.shape[0]) if max(len(alphas), len(qs)) > 1 else [None]
    for sample in samples:
        a = alphas[0] if len(alphas) == 1 else alphas[sample]
        levels = qs[0] if len(qs) == 1 else qs[sample]
        src, out = (x, shifted) if sample is None else (x[sample], shifted[sample])
        torch.div(src, a, out=out).mul_(levels).add_(MAGIC).clamp_(MAGIC - levels, MAGIC + levels)
    return shifted.view(torch.int32).to(torch.uint8), shifted


class QuantizedActivation(LazyActivation):
    """A quantized activation held as integer codes; to every operation but an int8 conv it is its float value.

    ``codes`` uint8 (level + 128), ``alpha`` and ``q`` broadcastable against it (``[1]`` or per sample
    ``[B, 1, 1, 1]``), ``level`` the float levels plus ``offset`` (None: made from the codes when needed).
    The float value ``level / q * alpha`` is computed on first use, in place and in the fake path's operation
    order, so it is bit-identical to the fake quantizer's output for the same levels.
    """

    @staticmethod
    def __new__(cls, codes, alpha, q, level=None, offset=0.0):
        self = torch.Tensor._make_wrapper_subclass(cls, codes.shape, strides=codes.stride(), dtype=torch.float32,
                                                   device=codes.device)
        self.codes, self.alpha, self.q = codes, alpha, q
        self._level, self._offset, self._value = level, offset, None
        return self

    def __init__(self, codes, alpha, q, level=None, offset=0.0):
        super().__init__()

    def value(self):
        if self._value is None:
            if self._level is None:
                level = self.codes.to(torch.float32).sub_(ZERO_POINT)
            else:
                level = self._level.sub_(self._offset) if self._offset else self._level
            self._value, self._level = level.div_(self.q).mul_(self.alpha), None
        return self._value

    def sample_step(self):
        """``alpha / q`` per sample, ``[B]`` (or ``[1]`` when every sample has the same quantizer)."""
        return (self.alpha / self.q).reshape(-1)

    def __repr__(self):
        return f'QuantizedActivation(shape={tuple(self.shape)}, alpha={self.alpha.reshape(-1).tolist()})'


class OneDNNConv(NamedTuple):
    """One oneDNN integer convolution: uint8 ``codes`` (zero point 128, scale 1), a prepacked int8 weight with its
    per-output-channel ``scales`` (input step x weight step), a float ``bias`` and the geometry."""
    codes: torch.Tensor
    packed: torch.Tensor
    scales: torch.Tensor
    zero_points: torch.Tensor
    bias: Optional[torch.Tensor]
    stride: list
    padding: list
    dilation: list
    groups: int

    def run(self, scales, bias, out_dtype=torch.float32, out_scale=1.0, attr='none', scalars=()):
        """The convolution with ``scales``/``bias`` (maybe folded), float32 output or uint8 codes at
        ``out_scale`` with zero point 128, and one oneDNN post-op (``relu``, ``hardtanh``)."""
        zero_point = ZERO_POINT if out_dtype == torch.uint8 else 0
        return torch.ops.onednn.qconv2d_pointwise(self.codes, 1.0, ZERO_POINT, self.packed, scales.contiguous(),
                                                  self.zero_points, bias, self.stride, self.padding, self.dilation,
                                                  self.groups, out_scale, zero_point, out_dtype, attr, list(scalars),
                                                  '')


class ConvOutput(LazyActivation):
    """The float output of an integer convolution, computed when needed (see the module docstring).

    Args:
        call (OneDNNConv): the convolution.
        shape (tuple): the conv's output shape (before ``shuffles``).
        ops (tuple): recorded elementwise operations ``(name, argument)``, in order: ``('scale', s)``,
            ``('affine', (scale_c, shift_c))``, ``('relu', None)``, ``('leaky_relu', slope)``.
        shuffles (tuple[int]): pixel-shuffle factors applied after the operations (these commute with them).
    """

    @staticmethod
    def __new__(cls, call, shape, ops=(), shuffles=()):
        out_shape = list(shape)
        for factor in shuffles:
            out_shape = [out_shape[0], out_shape[1] // factor**2, out_shape[2] * factor, out_shape[3] * factor]
        self = LazyActivation._wrap(cls, out_shape, call.codes.device)
        self.call, self.conv_shape, self.ops, self.shuffles = call, tuple(shape), tuple(ops), tuple(shuffles)
        self._value = None
        return self

    def __init__(self, call, shape, ops=(), shuffles=()):
        super().__init__()

    def __repr__(self):
        return f'ConvOutput(shape={tuple(self.shape)}, ops={[name for name, _ in self.ops]}, shuffles={self.shuffles})'

    def _with(self, op=None, shuffle=None):
        ops = self.ops + ((op,) if op else ())
        return ConvOutput(self.call, self.conv_shape, ops, self.shuffles + ((shuffle,) if shuffle else ()))

    # --------------------------------------------------------------- computing it
    def _folded(self):
        """``(scales, bias, remaining ops)``: leading scalings folded into the conv's output scales and bias."""
        scales, bias, ops = self.call.scales, self.call.bias, list(self.ops)
        while ops and ops[0][0] in ('scale', 'affine'):
            name, arg = ops.pop(0)
            factor, shift = (arg, None) if name == 'scale' else arg
            scales = scales * factor
            bias = None if bias is None else bias * factor
            if shift is not None:
                bias = shift if bias is None else bias + shift
        return scales, bias, ops

    def value(self):
        if self._value is None:
            scales, bias, ops = self._folded()
            relu_first = bool(ops) and ops[0][0] == 'relu'
            out = self.call.run(scales, bias, attr='relu' if relu_first else 'none')
            _apply_in_place(out, ops[1:] if relu_first else ops)
            for factor in self.shuffles:
                out = shuffle_float(out, factor)
            self._value = out
        return self._value

    def codes(self, alpha, q):
        """The uint8 codes of a fixed quantizer (``alpha`` of one element, ``q`` levels) applied to this output,
        computed without its float value; None once the float value exists (quantize that instead)."""
        if self._value is not None or alpha.numel() != 1:
            return None
        scales, bias, ops = self._folded()
        bound, level_max = float(alpha.detach()), float(q)
        codes = None
        if not ops or (len(ops) == 1 and ops[0][0] == 'relu'):
            low = 0.0 if ops else -bound
            try:
                codes = self.call.run(scales, bias, torch.uint8, bound / level_max, 'hardtanh', (low, bound))
            except RuntimeError:  # oneDNN declines the fused clip for some convolutions: requantize the float output
                codes = None
        if codes is None:
            out = self.call.run(scales, bias)
            _apply_in_place(out, ops)
            codes = round_to_codes(out, alpha, q)[0]
        for factor in self.shuffles:
            codes = F.pixel_shuffle(codes, factor)
        return codes

    # --------------------------------------------------------------- recording operations
    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        recorded = _record(func, args, kwargs or {})
        if recorded is not NotImplemented:
            return recorded
        return super().__torch_dispatch__(func, types, args, kwargs)


def _number(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, torch.Tensor) and not isinstance(value, LazyActivation) and value.numel() == 1 and \
            value.dim() == 0:
        return float(value)
    return None


def _record(func, args, kwargs):
    """The ConvOutput that records ``func(*args)``, or NotImplemented when it must run on the float value."""
    self = args[0] if args else None
    if not isinstance(self, ConvOutput) or self._value is not None or kwargs:
        return NotImplemented
    op = shuffle = None
    if func in (_aten.relu.default, _aten.relu_.default):
        op = ('relu', None)
    elif func in (_aten.leaky_relu.default, _aten.leaky_relu_.default):
        op = ('leaky_relu', float(args[1]) if len(args) > 1 else 0.01)
    elif func is _aten._prelu_kernel.default and args[1].numel() == 1:
        op = ('leaky_relu', float(args[1]))
    elif func in (_aten.mul.Tensor, _aten.mul.Scalar) and _number(args[1]) is not None:
        op = ('scale', _number(args[1]))
    elif func is _aten.native_batch_norm.default and not args[5] and not self.shuffles and \
            all(name in ('scale', 'affine') for name, _ in self.ops):
        _, weight, bias, mean, var, _, _, eps = args
        factor = torch.rsqrt(var + eps) * (1.0 if weight is None else weight)
        shift = -mean * factor + (0.0 if bias is None else bias)
        out = self._with(('affine', (factor.detach(), shift.detach())))
        empty = torch.empty(0)
        return out, empty, empty
    elif func is _aten.pixel_shuffle.default:
        shuffle = int(args[1])
    else:
        return NotImplemented
    if func in (_aten.relu_.default, _aten.leaky_relu_.default):  # in place: this tensor records it
        self.ops = self.ops + (op,)
        return self
    return self._with(op, shuffle)


def _apply_in_place(out, ops):
    for name, arg in ops:
        if name == 'relu':
            out.relu_()
        elif name == 'leaky_relu':
            F.leaky_relu_(out, arg)
        elif name == 'scale':
            out.mul_(arg)
        else:
            raise AssertionError(f'{name} is folded, never applied')  # affine only leads (checked when recorded)


def shuffle_float(x, factor):
    """Pixel shuffle of a float tensor; a channels-last one is shuffled as one strided copy (PyTorch's
    channels-last float pixel shuffle is many times slower)."""
    if not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous():
        return F.pixel_shuffle(x, factor)
    batch, channels, height, width = x.shape
    out_channels = channels // factor**2
    nhwc = x.permute(0, 2, 3, 1).reshape(batch, height, width, out_channels, factor, factor)
    out = torch.empty(batch, out_channels, height * factor, width * factor, dtype=x.dtype,
                      memory_format=torch.channels_last)
    out.permute(0, 2, 3, 1).view(batch, height, factor, width, factor, out_channels).copy_(
        nhwc.permute(0, 1, 4, 2, 5, 3))
    return out

