"""Default CADyQ placement for BasicSR's own networks, used by ``CADyQWrapper`` when the options give none.

The rule everywhere: the 3x3 convs inside residual blocks are quantized; head, tail, upsampler, body-final convs
and channel attention stay full precision. Blocks built like EDSR's (``conv -> act -> conv`` plus a skip) get
EDSR_CADyQ's arrangement: the block input is quantized once by a selector and that tensor feeds both the first
conv and the skip, a second selector sits before the second conv, and a fixed 8-bit quantizer on the residual
branch before the addition. Quantizer names are those of the hand-written archs (``quant_in``, ``quant_mid``,
``quant_res``), so an EDSR_CADyQ checkpoint loads into the wrapped BasicSR ``EDSR`` as it is.
"""
import inspect


def _residual_block(block, conv1, conv2, residual_end, features, body):
    """EDSR_CADyQ's block arrangement for blocks matched by ``block`` (their convs and residual-branch end)."""
    return {
        'quantize': [f'{block}.{conv1}', f'{block}.{conv2}'],
        'act_quant': [
            {'input': block, 'name': f'{block}.quant_in'},
            {'input': f'{block}.{conv2}', 'name': f'{block}.quant_mid'},
            {'output': f'{block}.{residual_end}', 'name': f'{block}.quant_res', 'fixed': 8},
        ],
        'features': features,
        'body': body,
    }


def _edsr(option):
    return _residual_block('body.*', 'conv1', 'conv2', 'conv2', ['body.*.conv2'], {'input': 'upsample'})


def _msrresnet(option):
    return _residual_block('body.*', 'conv1', 'conv2', 'conv2', ['body.*.conv2'], {'input': 'upconv1'})


def _rcan(option):
    # RCAB: rcab = (conv, ReLU, conv, channel attention); the residual branch ends with the attention's product
    block = 'body.*.residual_group.*'
    return _residual_block(block, 'rcab.0', 'rcab.2', 'rcab.3', ['body.*.conv'], {'input': 'upsample'})


def _rrdbnet(option):
    # Residual dense blocks concatenate their input with every earlier output: each conv's input is its own
    # tensor, so each conv gets its own selector; the skips stay full precision (like CARN_CADyQ's)
    rdb = 'body.*.rdb*'
    return {
        'quantize': [f'{rdb}.conv{i}' for i in range(1, 6)],
        'act_quant': [{'input': f'{rdb}.conv{i}', 'name': f'{rdb}.quant{i}'} for i in range(1, 6)],
        'features': ['body.*.rdb3.conv5'],
        'body': {'input': 'conv_up1'},
        'pad_to': {1: 4, 2: 2}.get(option('scale'), 1),  # x1 / x2 start with a pixel unshuffle by 4 / 2
    }


def _swinir(option):
    # the convs of the residual Swin Transformer blocks (RSTB); attention and MLP linears stay full precision
    if option('resi_connection') == '3conv':
        quantize = ['layers.*.conv.0', 'layers.*.conv.4']
        act_quant = [{'input': 'layers.*.conv.0', 'name': 'layers.*.quant_in'},
                     {'input': 'layers.*.conv.4', 'name': 'layers.*.quant_mid'}]
    else:
        quantize = ['layers.*.conv']
        act_quant = [{'input': 'layers.*.conv', 'name': 'layers.*.quant_in'}]
    tail = {'pixelshuffle': 'conv_before_upsample', 'nearest+conv': 'conv_before_upsample',
            'pixelshuffledirect': 'upsample'}.get(option('upsampler'), 'conv_last')
    return {
        'quantize': quantize,
        'act_quant': act_quant,
        'features': ['layers.*.conv'],
        'body': {'input': tail},
        'pad_to': option('window_size'),  # window attention needs sizes divisible by the window
    }


PRESETS = {'EDSR': _edsr, 'MSRResNet': _msrresnet, 'RCAN': _rcan, 'RRDBNet': _rrdbnet, 'SwinIR': _swinir}


def default_patterns(backbone_cls, backbone_opt):
    """The preset of ``backbone_cls`` (keys ``quantize``, ``act_quant``, ``features``, ``body``, maybe
    ``pad_to``) for its options ``backbone_opt``, or None for a network without a preset."""
    preset = PRESETS.get(backbone_cls.__name__)
    if preset is None:
        return None
    params = inspect.signature(backbone_cls).parameters

    def option(name):
        default = params[name].default if name in params else None
        return backbone_opt.get(name, default)

    return preset(option)
