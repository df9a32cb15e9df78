"""Deployment artefacts of a trained network: the int8 checkpoint, the ONNX graph with the bit selection inside,
and the post-training calibration of 8-bit FP layers (``fp_layer_bits``).

The int8 checkpoint stores each weight-quantized conv's weight (8-bit FP layers included) as its int8 levels
(``<conv>.weight_levels``) and range (``<conv>.weight_max``, the ``m`` of docs/method.md#quantizers; one per output
channel for an 8-bit FP layer) instead of the float weight, under ``params_int8``; every other tensor is stored as
in the training checkpoint. Only the int8 backend loads it: the levels are used as they are, so the network
computes exactly what the int8 backend computed from the original float weights.
"""
import os
import tempfile

import torch
import torch.nn as nn

from cadyq_plugin.checkpoint import CheckpointError, atomic_save, extract_state_dict, load_checkpoint
from cadyq_plugin.quant import set_backend
from cadyq_plugin.quant.fp_layers import QUANTIZED_FP_LAYERS
from cadyq_plugin.quant.weight_quant import WeightQuantized, weight_levels

INT8_KEY = 'params_int8'
ONNX_OPSET = 18


def _quantized_convs(net):
    return [(name, module) for name, module in net.named_modules() if isinstance(module, WeightQuantized)]


def int8_state_dict(net):
    """``net``'s state dict with every quantized conv weight replaced by its int8 levels and range."""
    state_dict = net.state_dict()
    for name, conv in _quantized_convs(net):
        if conv.w_bits > 8:
            raise ValueError(f'{name}: w_bits={conv.w_bits} does not fit int8 (the int8 checkpoint needs <= 8)')
        levels, m, _ = weight_levels(conv.weight, conv.w_bits, conv.w_channel_dim)
        del state_dict[f'{name}.weight']
        state_dict[f'{name}.weight_levels'] = levels.to(torch.int8)
        state_dict[f'{name}.weight_max'] = m.reshape(-1)
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
        raise CheckpointError(f'{path!r} does not fit this network: ' + '; '.join(problems) +
                              fp_layer_hint(net, expected - set(state_dict), set(state_dict) - expected))
    floats = {k: v for k, v in state_dict.items() if not k.endswith(('.weight_levels', '.weight_max'))}
    net.load_state_dict(floats, strict=False)  # exactly the quantized conv weights are missing: set below
    for name, conv in convs:
        conv.int8_kernel.load_levels(conv, state_dict[f'{name}.weight_levels'], state_dict[f'{name}.weight_max'])


def fp_layer_range_keys(net):
    """The state-dict entries of the input ranges of ``net``'s 8-bit FP layers (``fp_layer_bits``)."""
    return {f'{name}.quant_in.{entry}' for name, module in net.named_modules()
            if isinstance(module, QUANTIZED_FP_LAYERS) for entry in ('alpha', 'max_val')}


def fp_layer_hint(net, missing, unexpected):
    """What to do when a checkpoint and a network disagree about 8-bit FP layers ('' otherwise)."""
    bits = getattr(net, 'fp_layer_bits', None)
    if bits and set(missing) & fp_layer_range_keys(net):
        return (f'. The checkpoint has no input ranges for the {bits}-bit FP layers of this network: calibrate them '
                f'on images (`basicsr export ... --fp-layer-bits {bits} --calibrate FOLDER`), train with '
                'fp_layer_bits, or build the network without fp_layer_bits')
    if not bits and any('.quant_in.' in k for k in unexpected):
        return ('. The checkpoint has quantized FP layers (their quant_in ranges): build the network with its '
                'fp_layer_bits (network_g.fp_layer_bits, --fp-layer-bits on the command line)')
    return ''


def load_weights(net, path, missing_ok=()):
    """Load a BasicSR checkpoint (``params``/``params_ema``/bare) or an int8 checkpoint into ``net``, strictly;
    entries named in ``missing_ok`` may be absent from a BasicSR checkpoint (they keep their values)."""
    obj = load_checkpoint(path)
    if isinstance(obj, dict) and INT8_KEY in obj:
        load_int8_state_dict(net, obj[INT8_KEY], path)
        return 'int8'
    state_dict = extract_state_dict(obj, path)
    try:
        result = net.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:
        detail = ' '.join(str(err).split())
        raise CheckpointError(f'{path!r} does not fit this network: {detail}') from err
    missing = sorted(set(result.missing_keys) - set(missing_ok))
    if missing or result.unexpected_keys:
        problems = [f'missing key {k}' for k in missing] + [f'unexpected key {k}' for k in result.unexpected_keys]
        raise CheckpointError(f'{path!r} does not fit this network: ' + '; '.join(problems) +
                              fp_layer_hint(net, missing, result.unexpected_keys))
    return 'float'


def calibrate_fp_layers(net, images):
    """Post-training calibration of the 8-bit FP layers' input ranges (``fp_layer_bits``) on ``images`` (LR
    tensors ``[1, C, H, W]`` in [0, 1]); returns the number of images.

    Each range is set to PAMS's calibration statistic with the images as one batch: the mean over the images of
    the per-image maximum of ``|input|`` (every other quantizer, and every weight, is left as it is). The images
    run through the fake path, each FP-layer quantizer in calibration mode, everything else in eval mode.
    """
    quantizers = [m.quant_in for m in net.modules() if isinstance(m, QUANTIZED_FP_LAYERS)]
    if not quantizers:
        raise ValueError('the network has no 8-bit FP layers to calibrate: build it with fp_layer_bits')
    backend = net.backend
    totals, count = [0.0] * len(quantizers), 0
    set_backend(net, 'fake')
    net.eval()
    try:
        for quantizer in quantizers:
            quantizer.calibrating = True
            quantizer.train()
        with torch.no_grad():
            for image in images:
                net(image)
                count += 1
                for i, quantizer in enumerate(quantizers):
                    totals[i] += float(quantizer.max_val)
    finally:
        for quantizer in quantizers:
            quantizer.calibrating = False
            quantizer.eval()
        set_backend(net, backend)
    if not count:
        raise ValueError('no images to calibrate the 8-bit FP layers on')
    with torch.no_grad():
        for quantizer, total in zip(quantizers, totals):
            quantizer.max_val.fill_(total / count)
            quantizer.alpha.fill_(total / count)
    return count


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


def export_onnx(net, path, example=None, qlinear=False):
    """Write ``net`` (eval mode) as an ONNX graph with dynamic batch, height and width, atomically; returns the
    number of ``QLinearConv`` nodes.

    An int8-backend network becomes ``ConvInteger`` convs fed by in-graph quantization (and, for CADyQ, the
    selectors: image feature, per-channel std, Linear, ArgMax, per-sample scale gather); its outputs are
    ``sr`` and ``bits``. Any other network exports as it computes (``sr`` only, plus ``bits`` for a fake CADyQ).
    ``qlinear``: an image-wise graph (batch 1) whose requantized convs are ``QLinearConv``
    (:mod:`~cadyq_plugin.onnx_qlinear`).
    """
    net.eval()
    example = torch.rand(1 if qlinear else 2, 3, 24, 24) if example is None else example[:1] if qlinear else example
    with_bits = getattr(net, 'n_selectors', 0) > 0
    wrapper = _SelectionOutputs(net, with_bits).eval()
    batch, height, width = (torch.export.Dim(n, min=m) for n, m in (('batch', 1), ('height', 8), ('width', 8)))
    dynamic = {2: height, 3: width} if qlinear else {0: batch, 2: height, 3: width}
    with torch.no_grad():
        wrapper(example)  # an eager forward makes the int8 weights the graph takes as constants
        program = torch.onnx.export(wrapper, (example,), dynamo=True, verbose=False, opset_version=ONNX_OPSET,
                                    input_names=['lq'], output_names=['sr', 'bits'] if with_bits else ['sr'],
                                    dynamic_shapes=(dynamic,), custom_translation_table=_conv_integer_translation())
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=directory)
    os.close(fd)
    count = 0
    try:
        program.save(tmp)
        if qlinear:
            import onnx

            from cadyq_plugin.onnx_qlinear import rewrite_qlinear
            model = onnx.load(tmp)
            count = rewrite_qlinear(model, net)
            onnx.save(model, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return count
