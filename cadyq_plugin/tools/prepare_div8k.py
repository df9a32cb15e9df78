"""``basicsr prepare-div8k --hr DIV8K_train_HR``: Test2K / Test4K / Test8K from DIV8K.

Layout and the downsampling factors: ``cadyq_plugin/data/div8k.py``.
"""
import argparse

from cadyq_plugin.data.div8k import DIV8K_TEST_SETS, prepare_div8k
from cadyq_plugin.tools.prepare_args import add_common_args, run


def build_parser():
    parser = argparse.ArgumentParser(prog='basicsr prepare-div8k', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--hr', required=True, help='folder of DIV8K HR images named 1201.png ... 1500.png')
    parser.add_argument('--sets', nargs='+', default=list(DIV8K_TEST_SETS), choices=list(DIV8K_TEST_SETS),
                        help='which sets to build (default: all three)')
    add_common_args(parser)
    return parser


def prepare(args):
    return prepare_div8k(args.hr, args.root, args.scale, args.sets, overwrite=args.overwrite, partial=args.partial)


def main(argv):
    return run(build_parser(), prepare, argv)
