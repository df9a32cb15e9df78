"""Prepare Test2K / Test4K / Test8K from DIV8K: ``python scripts/prepare_div8k.py --hr DIV8K_train_HR``.

Layout and the downsampling factors: ``cadyq_plugin/data/div8k.py``.
"""
import argparse

from cadyq_plugin.data.div8k import DIV8K_TEST_SETS, prepare_div8k
from cadyq_plugin.data.script_args import add_common_args, run


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--hr', required=True, help='folder of DIV8K HR images named 1201.png ... 1500.png')
    parser.add_argument('--sets', nargs='+', default=list(DIV8K_TEST_SETS), choices=list(DIV8K_TEST_SETS),
                        help='which sets to build (default: all three)')
    add_common_args(parser)
    return parser


def main(args):
    return prepare_div8k(args.hr, args.root, args.scale, args.sets, overwrite=args.overwrite, partial=args.partial)


if __name__ == '__main__':
    run(build_parser(), main)
