"""``basicsr prepare-div2k``: DIV2K training LMDBs from DIV2K_train_HR (and optionally its downloaded bicubic LR).

``basicsr prepare-div2k --hr DIV2K_train_HR [--lr 4=DIV2K_train_LR_bicubic/X4] [--scales 2 3 4]``

Layout and choices: ``cadyq_plugin/data/div2k.py``.
"""
import argparse

from cadyq_plugin.data.div2k import prepare_div2k
from cadyq_plugin.tools.prepare_args import add_common_args, parse_mapping, run


def build_parser():
    parser = argparse.ArgumentParser(prog='basicsr prepare-div2k', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--hr', required=True, help='folder of DIV2K HR images (DIV2K_train_HR, 0001-0800)')
    parser.add_argument('--lr', action='append', metavar='SCALE=FOLDER',
                        help='downloaded bicubic LR folder for a scale (repeatable); missing scales are made')
    parser.add_argument('--scales', type=int, nargs='+', default=[4], help='scales to prepare (default: 4)')
    parser.add_argument('--crop-size', type=int, default=480, help='HR sub-image size (default: 480)')
    parser.add_argument('--step', type=int, default=240, help='HR sub-image stride (default: 240)')
    parser.add_argument('--thresh-size', type=int, default=0, help='keep a border crop if more remains (default: 0)')
    add_common_args(parser, scale=False)
    return parser


def prepare(args):
    return prepare_div2k(args.hr, args.root, args.scales, parse_mapping(args.lr, '--lr', int), args.crop_size,
                         args.step, args.thresh_size, overwrite=args.overwrite, partial=args.partial)


def main(argv):
    return run(build_parser(), prepare, argv)
