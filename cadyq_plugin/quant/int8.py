"""The ``int8`` backend: quantized convolutions executed as integer convolutions (eval only).

Quantized activations are levels ``-q..q`` times ``alpha / q`` and weights levels ``-127..127`` times
``m / 127``; both fit 8 bits exactly, so an int8 x int8 -> int32 convolution computes the fake-quantized
convolution exactly (the fake path rounds its float32 sums). A quantizer that feeds a :class:`QConv2d` emits a
:class:`QuantizedActivation`: the integer codes plus the per-sample ``alpha`` and ``q``. The conv runs the whole
batch as one integer convolution with activation scale 1 and multiplies each sample's output by its own
``alpha / q * m / 127`` before the bias, so samples that chose different bit-widths share one convolution.
Anything else that reads a :class:`QuantizedActivation` (EDSR's skip) sees its float value, computed on
first use exactly like the fake path's. A conv whose input is not quantized (SRResNet's ``conv1``) runs in
FP32 on the cached quantized weight, which is the fake path's arithmetic.

The integer convolution is oneDNN's (``torch.ops.onednn.qconv2d_pointwise``, x86 CPUs): uint8 activations
with zero point 128 and prepacked int8 weights, float32 output. Under ``torch.export`` (ONNX export) the conv
is the custom op ``cadyq::conv_integer``, which becomes ONNX ``ConvInteger``.
"""
import platform
from typing import NamedTuple

import torch
import torch.nn.functional as F

from cadyq_plugin.errors import UserError
from cadyq_plugin.quant.act_quant import rounded_level
from cadyq_plugin.quant.int8_lazy import (MAGIC, ZERO_POINT, ConvOutput, OneDNNConv, QuantizedActivation,
                                          round_to_codes, shuffle_float)
from cadyq_plugin.quant.weight_quant import QConvTranspose2d, weight_levels

BACKENDS = ('fake', 'int8')
_X86 = ('x86_64', 'amd64', 'i386', 'i686', 'x86')


class Int8BackendError(UserError, RuntimeError):
    """The int8 backend cannot run here (no x86 oneDNN int8 convolution, or a CUDA tensor)."""


def check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'fake' or 'int8', got {backend!r}")
    return backend


def check_int8_device(device):
    """Refuse devices without oneDNN's int8 convolution instead of silently running something else."""
    if device.type != 'cpu':
        raise Int8BackendError(f'backend int8 runs on x86 CPUs only (oneDNN int8 convolution); the input is on '
                               f'{device}: use backend fake on {device.type}')
    if platform.machine().lower() not in _X86 or not torch.backends.mkldnn.is_available():
        raise Int8BackendError(f'backend int8 needs an x86 CPU and a PyTorch built with oneDNN (this is '
                               f'{platform.machine()}, oneDNN available: {torch.backends.mkldnn.is_available()}): '
                               'use backend fake')


def quantize_to_codes(x, alpha, q):
    """``x`` quantized straight to a :class:`QuantizedActivation` (the fake path's rounding, no float output).

    This is the ``int8_codes`` hook of the quantizers that feed an integer conv (set by ``set_backend``). The
    output of an integer conv that nothing has read yet (:class:`ConvOutput`) is requantized by the conv itself
    when the quantizer is fixed (one ``alpha``); anything else is rounded to codes by :func:`round_to_codes`.
    """
    if torch.compiler.is_exporting():
        level = rounded_level(x, alpha, q)
        value = level / q * alpha
        value.int8_codes = ((level + ZERO_POINT).to(torch.uint8), alpha, q)
        return value
    if isinstance(x, ConvOutput):
        codes = x.codes(alpha, q)
        if codes is not None:
            return QuantizedActivation(codes, alpha, q)
    codes, shifted = round_to_codes(x, alpha, q)
    return QuantizedActivation(codes, alpha, q, shifted, MAGIC)


@torch.library.custom_op('cadyq::conv_integer', mutates_args=())
def conv_integer(codes: torch.Tensor, weight: torch.Tensor, stride: list[int], padding: list[int],
                 dilation: list[int], groups: int) -> torch.Tensor:
    """int32 ``conv(codes - 128, weight)`` (ONNX ``ConvInteger``); the eager version is for reference only."""
    out = F.conv2d(codes.to(torch.float64) - ZERO_POINT, weight.to(torch.float64), None, stride, padding, dilation,
                   groups)
    return out.to(torch.int32)


@conv_integer.register_fake
def _(codes, weight, stride, padding, dilation, groups):
    return F.conv2d(codes.to(torch.float32), weight.to(torch.float32), None, stride, padding, dilation,
                    groups).to(torch.int32)


class IntegerConv(NamedTuple):
    """The integer convolution that computes a weight-quantized conv: its int8 ``levels`` and geometry, and the
    pixel shuffle by ``shuffle`` after it (a transposed conv runs as a sub-pixel conv)."""
    levels: torch.Tensor
    stride: list
    padding: list
    dilation: list
    groups: int
    shuffle: int = 1

    def out_shape(self, in_shape):
        batch, _, height, width = in_shape
        kernel = self.levels.shape[2:]
        sizes = [(n + 2 * p - d * (k - 1) - 1) // s + 1
                 for n, p, d, k, s in zip((height, width), self.padding, self.dilation, kernel, self.stride)]
        return (batch, self.levels.shape[0], *sizes)

    def per_channel(self, values):
        """A per-output-channel vector of the conv (bias, weight step) per integer-conv output channel."""
        return values if values is None or self.shuffle == 1 else values.repeat_interleave(self.shuffle**2)


def subpixel_conv(conv, levels):
    """A transposed conv (stride ``s``, square kernel ``k``, padding ``p``, output exactly ``s`` times the input) as
    a stride-1 conv with ``s * s`` times the output channels followed by a pixel shuffle by ``s``:
    output pixel ``s * Y + r`` is ``sum_j in[Y + j] * w[r + p - s * j]`` over the taps ``j`` where the index lies in
    the kernel, so every weight level is reused as it is (zeros where a phase has no tap). None for any other
    geometry (the conv then runs in float on its quantized weight)."""
    stride, kernel, pad, extra = conv.stride[0], conv.kernel_size[0], conv.padding[0], conv.output_padding[0]
    square = all(len(set(v)) == 1 for v in (conv.stride, conv.kernel_size, conv.padding, conv.output_padding))
    if not square or conv.groups != 1 or tuple(conv.dilation) != (1, 1) or kernel - 2 * pad + extra != stride:
        return None
    # taps j with 0 <= r + p - s*j <= k - 1 for some phase r = 0 ... s-1, made symmetric (zero weights) so that
    # one symmetric padding keeps the size
    reach = max((kernel - 1 - pad) // stride, (stride - 1 + pad) // stride)
    low, high = -reach, reach
    taps = high - low + 1
    in_channels, out_channels = levels.shape[:2]
    weight = torch.zeros(out_channels, stride, stride, in_channels, taps, taps, dtype=levels.dtype)
    for ry in range(stride):
        for jy in range(low, high + 1):
            ky = ry + pad - stride * jy
            if not 0 <= ky < kernel:
                continue
            for rx in range(stride):
                for jx in range(low, high + 1):
                    kx = rx + pad - stride * jx
                    if 0 <= kx < kernel:
                        weight[:, ry, rx, :, jy - low, jx - low] = levels[:, :, ky, kx].t()
    weight = weight.reshape(out_channels * stride * stride, in_channels, taps, taps)
    return IntegerConv(weight, [1, 1], [reach, reach], [1, 1], 1, stride)


def integer_conv(conv, levels):
    """The :class:`IntegerConv` of ``conv`` (None where the geometry has none)."""
    if isinstance(conv, QConvTranspose2d):
        return subpixel_conv(conv, levels)
    return IntegerConv(levels, list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)


class PackedWeight:
    """A conv's weight levels (int8), their step ``m / q`` (one, or one per output channel), its integer
    convolution and what each execution needs, made on demand."""

    def __init__(self, levels, m, q, conv):
        self.levels = levels.to(torch.int8)
        self.m, self.q = m, q
        self.integer = integer_conv(conv, self.levels)
        channels = self.integer.levels.shape[0] if self.integer is not None else 0
        step = (m / q).to(torch.float32).reshape(-1)
        # the step of each integer-conv output channel
        self.step = step.expand(channels) if step.numel() == 1 else self.integer.per_channel(step)
        self.zero_points = torch.zeros(channels, dtype=torch.int64)
        self._prepacked = None
        self._float = None

    def prepacked(self):
        if self._prepacked is None:
            integer = self.integer
            ones = torch.ones(integer.levels.shape[0], dtype=torch.float64)
            self._prepacked = torch.ops.onednn.qconv_prepack(integer.levels, ones, 1.0, ZERO_POINT, integer.stride,
                                                             integer.padding, integer.dilation, integer.groups, None)
        return self._prepacked

    def float_weight(self):
        """The fake path's quantized weight ``level * m / q``, bit for bit."""
        if self._float is None:
            self._float = self.levels.to(torch.float32).mul_(self.m).div_(self.q)
        return self._float


class Int8ConvKernel:
    """The int8 execution of one weight-quantized conv, with its weights cached until they change.

    The cache is keyed by the weight's storage and version counter, so an optimizer step, ``load_state_dict``
    or ``.to()`` invalidates it; ``train()`` drops it too. A batch with one activation scale returns a
    :class:`ConvOutput` (computed when read, requantized by the conv when a fixed quantizer reads it); a batch
    whose samples have different scales is computed at once and rescaled per sample.
    """

    def __init__(self):
        self._key = None
        self._weight = None

    def clear(self):
        self._key = self._weight = None

    def __deepcopy__(self, memo):
        return Int8ConvKernel()  # a copy rebuilds its cache (oneDNN's packed weights are not copyable)

    @staticmethod
    def _cache_key(conv):
        return (conv.weight.data_ptr(), conv.weight._version, conv.weight.device, conv.w_bits)

    def weight(self, conv):
        if torch.compiler.is_exporting():  # the graph gets the levels made by an eager forward as constants
            if self._weight is None:
                raise Int8BackendError('run the network once in eval mode before exporting it (the int8 weights '
                                       'are made on the first forward)')
            return self._weight
        key = self._cache_key(conv)
        if key != self._key:
            self._weight = PackedWeight(*weight_levels(conv.weight, conv.w_bits, conv.w_channel_dim), conv)
            self._key = key
        return self._weight

    def load_levels(self, conv, levels, m):
        """Use stored levels and ``m`` (a deployment checkpoint: one, or one per output channel) and set
        ``conv.weight`` to their value."""
        q = 2**(conv.w_bits - 1) - 1
        if conv.w_channel_dim is not None:
            m = m.reshape([-1 if d == conv.w_channel_dim else 1 for d in range(levels.dim())])
        packed = PackedWeight(levels, m.to(torch.float32), q, conv)
        with torch.no_grad():
            conv.weight.copy_(packed.float_weight())
        self._weight, self._key = packed, self._cache_key(conv)

    def __call__(self, conv, x):
        check_int8_device(x.device)
        if conv.padding_mode != 'zeros':
            raise Int8BackendError(f'backend int8 supports zero padding only, got padding_mode={conv.padding_mode!r}')
        weight = self.weight(conv)
        integer = weight.integer
        if torch.compiler.is_exporting() and hasattr(x, 'int8_codes') and integer is not None:
            return _exported_conv(integer, x.int8_codes, weight.step, conv.bias)
        if not isinstance(x, QuantizedActivation) or integer is None:
            return conv.fake_forward(x, weight.float_weight())
        step = x.sample_step()
        bias = integer.per_channel(conv.bias)
        if step.numel() == 1 or bool((step == step[0]).all()):  # one scale for the batch: computed when read
            call = OneDNNConv(x.codes, weight.prepacked(), step[0] * weight.step, weight.zero_points, bias,
                              integer.stride, integer.padding, integer.dilation, integer.groups)
            shuffles = (integer.shuffle,) if integer.shuffle > 1 else ()
            return ConvOutput(call, integer.out_shape(x.codes.shape), shuffles=shuffles)
        call = OneDNNConv(x.codes, weight.prepacked(), weight.step, weight.zero_points, None, integer.stride,
                          integer.padding, integer.dilation, integer.groups)
        out = call.run(call.scales, None)
        per_sample = step.view(-1, 1, 1, 1)
        out = out.mul_(per_sample) if bias is None else torch.addcmul(bias.view(1, -1, 1, 1), out, per_sample, out=out)
        return shuffle_float(out, integer.shuffle) if integer.shuffle > 1 else out


def _exported_conv(integer, int8_codes, weight_step, bias):
    """The graph of one integer conv under ``torch.export``: ``ConvInteger``, the rescale, bias, pixel shuffle."""
    codes, alpha, q = int8_codes
    acc = conv_integer(codes, integer.levels, integer.stride, integer.padding, integer.dilation, integer.groups)
    out = acc.to(torch.float32) * ((alpha / q).view(-1, 1, 1, 1) * weight_step.view(1, -1, 1, 1))
    bias = integer.per_channel(bias)
    out = out if bias is None else out + bias.view(1, -1, 1, 1)
    return F.pixel_shuffle(out, integer.shuffle) if integer.shuffle > 1 else out

