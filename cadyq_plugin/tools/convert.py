"""``basicsr convert``: an original-implementation (or BasicSR EDSR) checkpoint -> a plugin checkpoint."""
import argparse
import sys

from cadyq_plugin.checkpoint import CheckpointError


def build_parser():
    from cadyq_plugin.convert.rules import LAYOUTS
    parser = argparse.ArgumentParser(prog='basicsr convert', description=__doc__)
    parser.add_argument('src', help='original checkpoint (.pt / .pth / .pth.tar)')
    parser.add_argument('dst', help='output BasicSR checkpoint (weights under "params")')
    parser.add_argument('--arch', required=True, choices=sorted(LAYOUTS))
    parser.add_argument('--quant-mode', required=True, choices=['fp', 'pams', 'cadyq'])
    parser.add_argument('--scale', type=int, default=4)
    parser.add_argument('--trusted', action='store_true',
                        help='allow full unpickling of SRC (runs code from the file: only for files you trust)')
    parser.add_argument('--overwrite', action='store_true', help='replace DST if it exists')
    return parser


def main(argv):
    import cadyq_plugin  # noqa: F401
    from cadyq_plugin.convert import convert_checkpoint
    args = build_parser().parse_args(argv)
    try:
        layout = convert_checkpoint(args.src, args.dst, args.arch, args.quant_mode, args.scale,
                                    trusted=args.trusted, overwrite=args.overwrite)
    except CheckpointError as err:
        print(f'basicsr convert: {err}', file=sys.stderr)
        return 1
    print(f'converted {args.src} ({layout} layout) -> {args.dst} [{args.arch}, {args.quant_mode}, x{args.scale}]')
    return 0
