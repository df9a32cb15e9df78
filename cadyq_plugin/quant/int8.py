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

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_map

from cadyq_plugin.errors import UserError
from cadyq_plugin.quant.act_quant import rounded_level
from cadyq_plugin.quant.weight_quant import weight_levels

BACKENDS = ('fake', 'int8')
ZERO_POINT = 128
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

    This is the ``int8_codes`` hook of the quantizers that feed a :class:`QConv2d` (set by ``set_backend``).
    ``level + 128`` as uint8 is ``int8(level)`` with the sign bit flipped, which is cheaper than adding 128.
    """
    level = rounded_level(x, alpha, q)
    if torch.compiler.is_exporting():
        value = level / q * alpha
        value.int8_codes = ((level + ZERO_POINT).to(torch.uint8), alpha, q)
        return value
    codes = level.to(torch.int8).view(torch.uint8).bitwise_xor_(0x80)
    return QuantizedActivation(codes, alpha, q, level)


class QuantizedActivation(torch.Tensor):
    """A quantized activation held as integer codes; to every operation but an int8 conv it is its float value.

    ``codes`` uint8 (level + 128), ``alpha`` and ``q`` broadcastable against it (``[1]`` or per sample
    ``[B, 1, 1, 1]``), ``level`` the float levels they were made from. The float value ``level / q * alpha`` is
    computed on first use, in place and in the fake path's operation order, so it is bit-identical to the fake
    quantizer's output.
    """

    @staticmethod
    def __new__(cls, codes, alpha, q, level):
        self = torch.Tensor._make_wrapper_subclass(cls, codes.shape, strides=codes.stride(), dtype=torch.float32,
                                                   device=codes.device)
        self.codes, self.alpha, self.q = codes, alpha, q
        self._level, self._value = level, None
        return self

    def __init__(self, codes, alpha, q, level):
        super().__init__()

    def value(self):
        if self._value is None:
            self._value, self._level = self._level.div_(self.q).mul_(self.alpha), None
        return self._value

    def sample_step(self):
        """``alpha / q`` per sample, ``[B]`` (or ``[1]`` when every sample has the same quantizer)."""
        return (self.alpha / self.q).reshape(-1)

    def __repr__(self):
        return f'QuantizedActivation(shape={tuple(self.shape)}, alpha={self.alpha.reshape(-1).tolist()})'

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        unwrap = lambda t: t.value() if isinstance(t, QuantizedActivation) else t  # noqa: E731
        return func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs or {}))


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


class PackedWeight:
    """A conv's weight levels (int8), their step ``m / q`` and what each execution needs, made on demand."""

    def __init__(self, levels, m, q):
        self.levels = levels.to(torch.int8)
        self.m, self.q = m, q
        self.step = (m / q).to(torch.float32).reshape(1)
        self.zero_points = torch.zeros(levels.shape[0], dtype=torch.int64)
        self._prepacked = None
        self._float = None

    def prepacked(self, conv):
        if self._prepacked is None:
            ones = torch.ones(conv.out_channels, dtype=torch.float64)
            self._prepacked = torch.ops.onednn.qconv_prepack(self.levels, ones, 1.0, ZERO_POINT, list(conv.stride),
                                                             list(conv.padding), list(conv.dilation), conv.groups,
                                                             None)
        return self._prepacked

    def float_weight(self):
        """The fake path's quantized weight ``level * m / q``, bit for bit."""
        if self._float is None:
            self._float = self.levels.to(torch.float32).mul_(self.m).div_(self.q)
        return self._float


class Int8ConvKernel:
    """The int8 execution of one :class:`QConv2d`, with its weights cached until they change.

    The cache is keyed by the weight's storage and version counter, so an optimizer step, ``load_state_dict``
    or ``.to()`` invalidates it; ``QConv2d.train()`` drops it too.
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
            self._weight, self._key = PackedWeight(*weight_levels(conv.weight, conv.w_bits)), key
        return self._weight

    def load_levels(self, conv, levels, m):
        """Use stored levels and ``m`` (a deployment checkpoint) and set ``conv.weight`` to their value."""
        q = 2**(conv.w_bits - 1) - 1
        packed = PackedWeight(levels, m.to(torch.float32), q)
        with torch.no_grad():
            conv.weight.copy_(packed.float_weight())
        self._weight, self._key = packed, self._cache_key(conv)

    def __call__(self, conv, x):
        check_int8_device(x.device)
        if conv.padding_mode != 'zeros':
            raise Int8BackendError(f'backend int8 supports zero padding only, got padding_mode={conv.padding_mode!r}')
        weight = self.weight(conv)
        if torch.compiler.is_exporting() and hasattr(x, 'int8_codes'):
            codes, alpha, q = x.int8_codes
            acc = conv_integer(codes, weight.levels, list(conv.stride), list(conv.padding), list(conv.dilation),
                               conv.groups)
            out = acc.to(torch.float32) * (alpha / q * weight.step).view(-1, 1, 1, 1)
            return out if conv.bias is None else out + conv.bias.view(1, -1, 1, 1)
        if not isinstance(x, QuantizedActivation):
            return conv._conv_forward(x, weight.float_weight(), conv.bias)
        step = x.sample_step()
        if step.numel() == 1 or bool((step == step[0]).all()):  # one scale for the batch: fused into the conv
            return self._onednn(conv, x.codes, weight, (step[0] * weight.step).expand(conv.out_channels), conv.bias)
        out = self._onednn(conv, x.codes, weight, weight.step.expand(conv.out_channels), None)
        if conv.bias is None:
            return out.mul_(step.view(-1, 1, 1, 1))
        return torch.addcmul(conv.bias.view(1, -1, 1, 1), out, step.view(-1, 1, 1, 1), out=out)

    @staticmethod
    def _onednn(conv, codes, weight, out_scale, bias):
        return torch.ops.onednn.qconv2d_pointwise(codes, 1.0, ZERO_POINT, weight.prepacked(conv),
                                                  out_scale.contiguous(), weight.zero_points, bias,
                                                  list(conv.stride), list(conv.padding), list(conv.dilation),
                                                  conv.groups, 1.0, 0, torch.float32, 'none', [], '')
