"""``basicsr bitops``: per-layer MACs and the FP / W8A8 / CADyQ BitOPs of an options file's network (with
``network_g.fp_layer_bits``, its FP layers counted at that bit-width)."""
import argparse
import sys

from cadyq_plugin.errors import UserError


class BitopsError(UserError, ValueError):
    """A request the report cannot answer; the message names the value and what was expected."""


def parse_size(text):
    try:
        width, height = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'--hr-size must look like 1280x720 (width x height), got {text!r}')
    return width, height


def build_cadyq_net(network_opt):
    """The options' backbone in cadyq mode: all quantizer places exist, whatever the file's quant_mode."""
    from basicsr.archs import build_network
    from cadyq_plugin.config_check import bits_problem
    if 'bits' in network_opt:
        problem = bits_problem(network_opt['bits'], 'network_g.bits')
        if problem:
            raise BitopsError(problem)
    network_opt = dict(network_opt)
    network_opt['quant_mode'] = 'cadyq'
    return build_network(network_opt)


def candidate_bits(net):
    """The sorted candidate bit-widths of the network's selectors."""
    from cadyq_plugin.quant import BitSelector
    return sorted({b for module in net.modules() if isinstance(module, BitSelector) for b in module.bits})


def report(network_opt, hr_width, hr_height, fabs=None):
    """Return the printable report (a string) for one network and output size.

    Args:
        fabs: Average bits of the dynamic layers to report; each must lie within the candidate bits, which are the
            default.
    """
    from cadyq_plugin.metrics import count_layer_macs, forward_bitops
    from cadyq_plugin.quant.fp_layers import QUANTIZED_FP_LAYERS
    net = build_cadyq_net(network_opt)
    scale = net.upscale
    if hr_width % scale or hr_height % scale:
        raise BitopsError(f'--hr-size {hr_width}x{hr_height} is not divisible by the network scale {scale}')
    bits = candidate_bits(net)
    fabs = [float(b) for b in bits] if fabs is None else fabs
    outside = [fab for fab in fabs if not bits[0] <= fab <= bits[-1]]
    if outside:
        raise BitopsError(f'--fab {outside[0]:g} is outside the candidate bits {bits} of network_g: an average bit '
                          f'lies in [{bits[0]}, {bits[-1]}]')
    layers = count_layer_macs(net, hr_height // scale, hr_width // scale)
    fp_layers = {name for name, module in net.named_modules() if isinstance(module, QUANTIZED_FP_LAYERS)}
    lines = [f'{network_opt["type"]} x{scale}, output {hr_width}x{hr_height} (LR {hr_width // scale}x'
             f'{hr_height // scale})', f'{"layer":40s} {"input":>12s} {"MACs (G)":>10s}']
    for layer in layers:
        kind = {'fp': 'FP', 'fixed': f'fixed A{layer.act_bits}', 'dynamic': f'selector {layer.act_bits}'}
        mark = ' (FP layer)' if layer.name in fp_layers else ''
        lines.append(f'{layer.name:40s} {kind[layer.act_kind]:>12s} {layer.macs / 1e9:10.3f}{mark}')
    fp = sum(layer.macs for layer in layers)
    quantized = sum(layer.macs for layer in layers if layer.act_kind != 'fp')
    lines.append(f'MACs: {fp / 1e9:.2f} G total, {quantized / 1e9:.2f} G in quantized convs, '
                 f'{(fp - quantized) / 1e9:.2f} G in FP layers')
    if fp_layers:
        bits = net.fp_layer_bits
        fp_layer_macs = sum(layer.macs for layer in layers if layer.name in fp_layers)
        lines += [f'fp_layer_bits {bits}: the {len(fp_layers)} convs the reference keeps in FP ("(FP layer)" above, '
                  f'{fp_layer_macs / 1e9:.2f} G MACs) run at W{bits}A{bits}:',
                  f'  every BitOPs line below counts them at {bits} x {bits} bits; the FAB counts the selectors only']
    lines += [
        f'BitOPs FP        : {fp / 1e9:8.2f} G',
        f'BitOPs W8A8      : {forward_bitops(layers, fab=8) / 1e9:8.2f} G',
    ]
    lines += [f'BitOPs CADyQ FAB {fab:<4g}: {forward_bitops(layers, fab=fab) / 1e9:8.2f} G' for fab in fabs]
    return '\n'.join(lines)


def build_parser():
    parser = argparse.ArgumentParser(prog='basicsr bitops', description=__doc__)
    parser.add_argument('-opt', required=True, help='options yml with a network_g section')
    parser.add_argument('--hr-size', type=parse_size, default=(1280, 720), help='SR output size, WxH')
    parser.add_argument('--fab', type=float, action='append', help='average bit of the dynamic layers '
                        '(repeatable; default: each candidate bit-width)')
    return parser


def main(argv):
    args = build_parser().parse_args(argv)
    import cadyq_plugin  # noqa: F401  (registration)
    from cadyq_plugin.config_check import ConfigError
    from cadyq_plugin.options import read_yml
    try:
        opt = read_yml(args.opt)
        if not isinstance(opt.get('network_g'), dict):
            raise ConfigError(args.opt, ['network_g is missing: the network whose BitOPs to count'])
    except ConfigError as err:
        print(f'basicsr bitops: options file {args.opt!r}: {"; ".join(err.problems)}', file=sys.stderr)
        return 1
    from cadyq_plugin.archs.wrapper_arch import WrapperConfigError
    try:
        print(report(opt['network_g'], *args.hr_size, args.fab))
    except (BitopsError, WrapperConfigError) as err:
        print(f'basicsr bitops: options file {args.opt!r}: {err}', file=sys.stderr)
        return 1
    return 0
