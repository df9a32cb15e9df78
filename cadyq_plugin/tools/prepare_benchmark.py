"""``basicsr prepare-benchmark --set Set5=path/Set5/HR --set Set14=...``: prepare benchmark test sets.

Layout and choices: ``cadyq_plugin/data/benchmark_sets.py``.
"""
import argparse

from cadyq_plugin.data.benchmark_sets import prepare_benchmark
from cadyq_plugin.tools.prepare_args import add_common_args, parse_mapping, run


def build_parser():
    parser = argparse.ArgumentParser(prog='basicsr prepare-benchmark', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--set', action='append', required=True, metavar='NAME=HR_FOLDER',
                        help='a test set and its HR images, e.g. Set5=benchmark/Set5/HR (repeatable)')
    parser.add_argument('--lr', action='append', metavar='NAME=LR_FOLDER',
                        help='downloaded bicubic LR images of a set (optional; otherwise made from HR)')
    add_common_args(parser)
    return parser


def prepare(args):
    return prepare_benchmark(parse_mapping(args.set, '--set'), args.root, args.scale, parse_mapping(args.lr, '--lr'),
                             overwrite=args.overwrite, partial=args.partial)


def main(argv):
    return run(build_parser(), prepare, argv)
