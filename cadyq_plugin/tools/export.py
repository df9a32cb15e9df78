"""``basicsr export``: a trained pams/cadyq checkpoint -> an int8 deployment checkpoint and/or an ONNX graph.

The int8 checkpoint (``OUT.pth``) holds the quantized convs' weights as int8 levels with their ranges and loads
into the int8 backend alone (``basicsr infer --model OUT.pth --backend int8``). The ONNX graph (``--onnx``) has
the dynamic bit selection inside and runs in onnxruntime (``pip install -e .[onnx]``).

Full-integer network after training: ``--fp-layer-bits 8 --calibrate FOLDER`` quantizes the convs the reference
keeps in full precision (head, upsampler, tail, ...) at 8 bits and sets their input ranges from the images in
FOLDER (LR images, the network's input), post-training; a network trained with ``fp_layer_bits`` needs neither.
"""
import argparse
import os
import sys

from cadyq_plugin.errors import InputError, OutputExistsError, UserError
from cadyq_plugin.tools.infer import input_images, read_lr
from cadyq_plugin.tools.network_args import add_network_args, build_loaded_network, network_options


def build_parser():
    parser = argparse.ArgumentParser(prog='basicsr export', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_network_args(parser)
    parser.add_argument('out', nargs='?', help='int8 checkpoint to write (.pth)')
    parser.add_argument('--onnx', help='ONNX graph to write (.onnx)')
    parser.add_argument('--qlinear', action='store_true', help='with --onnx: an image-wise graph (batch 1) whose '
                        'requantized convs are QLinearConv, onnxruntime\'s fast integer conv')
    parser.add_argument('--calibrate', metavar='FOLDER', help='post-training calibration of the input ranges of '
                        'the 8-bit FP layers on these LR images (with --fp-layer-bits or network_g.fp_layer_bits)')
    parser.add_argument('--overwrite', action='store_true', help='replace existing outputs')
    return parser


def conv_sizes(net):
    """Bytes of the quantized convs' weights as float32 and as int8 levels (+ one float32 range each)."""
    from cadyq_plugin.quant.weight_quant import WeightQuantized
    convs = [m for m in net.modules() if isinstance(m, WeightQuantized)]
    numel = sum(conv.weight.numel() for conv in convs)
    return 4 * numel, numel + 4 * len(convs)


def run(args):
    targets = [path for path in (args.out, args.onnx) if path]
    if not targets:
        raise InputError('nothing to write: give OUT.pth and/or --onnx OUT.onnx')
    if args.qlinear and not args.onnx:
        raise InputError('--qlinear shapes the ONNX graph: give --onnx OUT.onnx')
    if not args.overwrite:
        for path in targets:
            if os.path.exists(path):
                raise OutputExistsError(f'{path} exists; pass --overwrite to replace it')
    calibration = input_images(args.calibrate) if args.calibrate else None  # unreadable images: refused now
    from cadyq_plugin.deploy import calibrate_fp_layers, fp_layer_range_keys
    net_opt = network_options(args, 'int8')
    if calibration is not None and not net_opt.get('fp_layer_bits'):
        raise InputError('--calibrate sets the input ranges of 8-bit FP layers: give --fp-layer-bits 8 (or '
                         'network_g.fp_layer_bits)')
    net = build_loaded_network(net_opt, args.model, fp_layer_range_keys if calibration is not None else None)
    if calibration is not None:
        count = calibrate_fp_layers(net, (read_lr(path) for path in calibration))
        print(f'calibrated the input ranges of {len(fp_layer_range_keys(net)) // 2} {net.fp_layer_bits}-bit FP '
              f'layers on {count} image{"s" if count != 1 else ""} of {args.calibrate}')
    if args.out:
        from cadyq_plugin.deploy import save_int8_checkpoint
        save_int8_checkpoint(net, args.out)
        fp32, int8 = conv_sizes(net)
        print(f'int8 checkpoint {args.out}: {os.path.getsize(args.out) / 2**20:.2f} MiB (quantized convs '
              f'{int8 / 2**20:.2f} MiB, {fp32 / 2**20:.2f} MiB as float32)')
    if args.onnx:
        try:
            import onnxruntime  # noqa: F401  (the graph is for it; fail before the export if it is missing)
            import onnxscript  # noqa: F401
        except ImportError as err:
            raise InputError(f'--onnx needs the onnx extra ({err.name} is missing): pip install -e .[onnx]') from err
        from cadyq_plugin.deploy import export_onnx
        count = export_onnx(net, args.onnx, qlinear=args.qlinear)
        qlinear = f', batch 1, {count} QLinearConv' if args.qlinear else ''
        print(f'ONNX graph {args.onnx}: {os.path.getsize(args.onnx) / 2**20:.2f} MiB{qlinear}')


def main(argv):
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except UserError as err:
        print(f'basicsr export: {err}', file=sys.stderr)
        return 1
    return 0
