"""Deployment artefacts of a trained network: the int8 checkpoint and the ONNX graph with the bit selection inside.

The int8 checkpoint stores each quantized conv's weight as its int8 levels (``<conv>.weight_levels``) and range
(``<conv>.weight_max``, the ``m`` of docs/method.md#quantizers) instead of the float weight, under ``params_int8``; every other
tensor is stored as in the training checkpoint. Only the int8 backend loads it: the levels are used as they
are, so the network computes exactly what the int8 backend computed from the original float weights.
"""
import os
import tempfile

import torch
import torch.nn as nn

from cadyq_plugin.checkpoint import CheckpointError, atomic_save, extract_state_dict, load_checkpoint
from cadyq_plugin.quant import QConv2d
from cadyq_plugin.quant.weight_quant import weight_levels

INT8_KEY = 'params_int8'
ONNX_OPSET = 18


def _quantized_convs(net):
    return [(name, module) for name, module in net.named_modules() if isinstance(module, QConv2d)]


def int8_state_dict(net):
    """``net``'s state dict with every quantized conv weight replaced by its int8 levels and range."""
    state_dict = net.state_dict()
    for name, conv in _quantized_convs(net):
        if conv.w_bits > 8:
            raise ValueError(f'{name}: w_bits={conv.w_bits} does not fit int8 (the int8 checkpoint needs <= 8)')
        levels, m, _ = weight_levels(conv.weight, conv.w_bits)
        del state_dict[f'{name}.weight']
        state_dict[f'{name}.weight_levels'] = levels.to(torch.int8)
        state_dict[f'{name}.weight_max'] = m.reshape(1)
    return state_dict


def save_int8_checkpoint(net, path):
    """Write the int8 checkpoint of ``net`` atomically (``{'params_int8': ...}``)."""
    atomic_save({INT8_KEY: int8_state_dict(net)}, path)


def _int8_keys(net):
    keys = set(net.state_dict())
    for name, _ in _quantized_convs(net):
        keys.discard(f'{name}.weight')
        keys |= {f'{name}.weight_levels', f'{name}.weight_max'}
    return keys


def load_int8_state_dict(net, state_dict, path):
    """Load an int8 checkpoint's tensors into ``net`` (built with ``backend: int8``); strict, errors name ``path``."""
    convs = _quantized_convs(net)
    if not convs or any(conv.int8_kernel is None for _, conv in convs):
        raise CheckpointError(f'{path!r} is an int8 checkpoint: it loads into a pams or cadyq network built with '
                              'backend int8 only')
    expected = _int8_keys(net)
    problems = [f'missing key {k}' for k in sorted(expected - set(state_dict))]
    problems += [f'unexpected key {k}' for k in sorted(set(state_dict) - expected)]
    for name, conv in convs:
        levels = state_dict.get(f'{name}.weight_levels')
        if levels is not None and (levels.shape != conv.weight.shape or levels.dtype != torch.int8):
            problems.append(f'{name}.weight_levels is {levels.dtype} {tuple(levels.shape)}, expected int8 '
                            f'{tuple(conv.weight.shape)}')
    if problems:
        raise CheckpointError(f'{path!r} does not fit this network: ' + '; '.join(problems))
    floats = {k: v for k, v in state_dict.items() if not k.endswith(('.weight_levels', '.weight_max'))}
    net.load_state_dict(floats, strict=False)  # exactly the quantized conv weights are missing: set below
    for name, conv in convs:
        conv.int8_kernel.load_levels(conv, state_dict[f'{name}.weight_levels'], state_dict[f'{name}.weight_max'])


def load_weights(net, path):
    """Load a BasicSR checkpoint (``params``/``params_ema``/bare) or an int8 checkpoint into ``net``, strictly."""
    obj = load_checkpoint(path)
    if isinstance(obj, dict) and INT8_KEY in obj:
        load_int8_state_dict(net, obj[INT8_KEY], path)
        return 'int8'
    state_dict = extract_state_dict(obj, path)
    try:
        net.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        detail = ' '.join(str(err).split())
        raise CheckpointError(f'{path!r} does not fit this network: {detail}') from err
    return 'float'


class _SelectionOutputs(nn.Module):
    """What the ONNX graph returns: the SR image and, for CADyQ, the chosen bits ``[B, n_selectors]``."""

    def __init__(self, net, with_bits):
        super().__init__()
        self.net = net
        self.with_bits = with_bits

    def forward(self, x):
        if not self.with_bits:
            return self.net(x)
        sr, aux = self.net(x, return_aux=True)
        return sr, aux['bits']


def _conv_integer_translation():
    """``cadyq::conv_integer`` -> ONNX ``ConvInteger`` (uint8 codes with zero point 128, int8 weights)."""
    import onnxscript
    from onnxscript import opset18 as op

    from cadyq_plugin.quant.int8 import ZERO_POINT

    def conv_integer(codes, weight, stride, padding, dilation, groups):
        zero_point = op.Constant(value=onnxscript.ir.tensor(ZERO_POINT, dtype=onnxscript.ir.DataType.UINT8))
        return op.ConvInteger(codes, weight, zero_point, strides=stride, pads=list(padding) * 2,
                              dilations=dilation, group=groups)

    return {torch.ops.cadyq.conv_integer.default: conv_integer}


def export_onnx(net, path, example=None):
    """Write ``net`` (eval mode) as an ONNX graph with dynamic batch, height and width, atomically.

    An int8-backend network becomes ``ConvInteger`` convs fed by in-graph quantization (and, for CADyQ, the
    selectors: image feature, per-channel std, Linear, ArgMax, per-sample scale gather); its outputs are
    ``sr`` and ``bits``. Any other network exports as it computes (``sr`` only, plus ``bits`` for a fake CADyQ).
    """
    net.eval()
    example = torch.rand(2, 3, 24, 24) if example is None else example
    with_bits = getattr(net, 'n_selectors', 0) > 0
    wrapper = _SelectionOutputs(net, with_bits).eval()
    batch, height, width = (torch.export.Dim(n, min=m) for n, m in (('batch', 1), ('height', 8), ('width', 8)))
    with torch.no_grad():
        wrapper(example)  # an eager forward makes the int8 weights the graph takes as constants
        program = torch.onnx.export(wrapper, (example,), dynamo=True, verbose=False, opset_version=ONNX_OPSET,
                                    input_names=['lq'], output_names=['sr', 'bits'] if with_bits else ['sr'],
                                    dynamic_shapes=({0: batch, 2: height, 3: width},),
                                    custom_translation_table=_conv_integer_translation())
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=directory)
    os.close(fd)
    try:
        program.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
