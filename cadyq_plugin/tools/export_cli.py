"""``basicsr export``: a trained pams/cadyq checkpoint -> an int8 deployment checkpoint and/or an ONNX graph.

The int8 checkpoint (``OUT.pth``) holds the quantized convs' weights as int8 levels with their ranges and loads
into the int8 backend alone (``basicsr infer --model OUT.pth --backend int8``). The ONNX graph (``--onnx``) has
the dynamic bit selection inside and runs in onnxruntime (``pip install -e .[onnx]``).
"""
import argparse
import os
import sys

from cadyq_plugin.errors import InputError, OutputExistsError, UserError
from cadyq_plugin.tools.network_args import add_network_args, build_loaded_network, network_options


def build_parser():
    parser = argparse.ArgumentParser(prog='basicsr export', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_network_args(parser)
    parser.add_argument('out', nargs='?', help='int8 checkpoint to write (.pth)')
    parser.add_argument('--onnx', help='ONNX graph to write (.onnx)')
    parser.add_argument('--overwrite', action='store_true', help='replace existing outputs')
    return parser


def conv_sizes(net):
    """Bytes of the quantized convs' weights as float32 and as int8 levels (+ one float32 range each)."""
    from cadyq_plugin.quant import QConv2d
    convs = [m for m in net.modules() if isinstance(m, QConv2d)]
    numel = sum(conv.weight.numel() for conv in convs)
    return 4 * numel, numel + 4 * len(convs)


def run(args):
    targets = [path for path in (args.out, args.onnx) if path]
    if not targets:
        raise InputError('nothing to write: give OUT.pth and/or --onnx OUT.onnx')
    if not args.overwrite:
        for path in targets:
            if os.path.exists(path):
                raise OutputExistsError(f'{path} exists; pass --overwrite to replace it')
    net = build_loaded_network(network_options(args, 'int8'), args.model)
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
        export_onnx(net, args.onnx)
        print(f'ONNX graph {args.onnx}: {os.path.getsize(args.onnx) / 2**20:.2f} MiB')


def main(argv):
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except UserError as err:
        print(f'basicsr export: {err}', file=sys.stderr)
        return 1
    return 0
