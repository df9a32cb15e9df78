"""``basicsr bitops``: per-layer MACs and the FP / W8A8 / CADyQ BitOPs of an options file's network."""
import argparse

from cadyq_plugin.tools.options import read_options


def parse_size(text):
    try:
        width, height = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'--hr-size must look like 1280x720 (width x height), got {text!r}')
    return width, height


def build_cadyq_net(network_opt):
    """The options' backbone in cadyq mode: all quantizer places exist, whatever the file's quant_mode."""
    from basicsr.archs import build_network
    network_opt = dict(network_opt)
    network_opt['quant_mode'] = 'cadyq'
    return build_network(network_opt)


def report(network_opt, hr_width, hr_height, fabs):
    """Return the printable report (a string) for one network and output size."""
    from cadyq_plugin.metrics import count_layer_macs, forward_bitops
    net = build_cadyq_net(network_opt)
    scale = net.upscale
    if hr_width % scale or hr_height % scale:
        raise SystemExit(f'--hr-size {hr_width}x{hr_height} is not divisible by the network scale {scale}')
    layers = count_layer_macs(net, hr_height // scale, hr_width // scale)
    lines = [f'{network_opt["type"]} x{scale}, output {hr_width}x{hr_height} (LR {hr_width // scale}x'
             f'{hr_height // scale})', f'{"layer":40s} {"input":>12s} {"MACs (G)":>10s}']
    for layer in layers:
        kind = {'fp': 'FP', 'fixed': f'fixed A{layer.act_bits}', 'dynamic': f'selector {layer.act_bits}'}
        lines.append(f'{layer.name:40s} {kind[layer.act_kind]:>12s} {layer.macs / 1e9:10.3f}')
    fp = sum(layer.macs for layer in layers)
    quantized = sum(layer.macs for layer in layers if layer.act_kind != 'fp')
    lines += [
        f'MACs: {fp / 1e9:.2f} G total, {quantized / 1e9:.2f} G in quantized convs, '
        f'{(fp - quantized) / 1e9:.2f} G in FP layers',
        f'BitOPs FP        : {fp / 1e9:8.2f} G',
        f'BitOPs W8A8      : {forward_bitops(layers, fab=8) / 1e9:8.2f} G',
    ]
    lines += [f'BitOPs CADyQ FAB {fab:<4g}: {forward_bitops(layers, fab=fab) / 1e9:8.2f} G' for fab in fabs]
    return '\n'.join(lines)


def main(argv):
    parser = argparse.ArgumentParser(prog='basicsr bitops', description=__doc__)
    parser.add_argument('-opt', required=True, help='options yml with a network_g section')
    parser.add_argument('--hr-size', type=parse_size, default=(1280, 720), help='SR output size, WxH')
    parser.add_argument('--fab', type=float, action='append', help='average bit of the dynamic layers '
                        '(repeatable; default: each candidate bit-width)')
    args = parser.parse_args(argv)
    opt = read_options(args.opt)
    fabs = args.fab
    if fabs is None:
        fabs = [float(b) for b in opt['network_g'].get('bits', (4, 6, 8))]
    print(report(opt['network_g'], *args.hr_size, fabs))
    return 0
