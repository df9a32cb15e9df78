"""Shared command-line pieces of the ``basicsr prepare-*`` commands (``cadyq_plugin/tools/prepare_*.py``)."""
import argparse
import logging
from typing import Callable, Dict, Optional, Sequence

from cadyq_plugin.errors import InputError, UserError

INTERRUPTED = 130  # the shell's status for a command ended by SIGINT


def add_common_args(parser: argparse.ArgumentParser, scale: bool = True) -> None:
    """``--root``, ``--scale``, ``--overwrite`` and the mutually exclusive ``--resume`` / ``--redo``."""
    parser.add_argument('--root', default='datasets', help='output root (default: datasets)')
    if scale:
        parser.add_argument('--scale', type=int, default=4, help='SR scale (default: 4)')
    parser.add_argument('--overwrite', action='store_true',
                        help='rebuild outputs that already exist, moving the old ones aside to *.bak-<time>')
    group = parser.add_mutually_exclusive_group()
    group.add_argument('--resume', dest='partial', action='store_const', const='resume',
                       help='continue outputs left half-written (*.partial) by an interrupted run')
    group.add_argument('--redo', dest='partial', action='store_const', const='redo',
                       help='delete outputs left half-written (*.partial) by an interrupted run and start over; '
                       'rebuild outputs whose sources or options changed (or that have no manifest), moving the old '
                       'ones aside to *.bak-<time>')


def parse_mapping(items: Optional[Sequence[str]], what: str, key_type: Callable = str) -> Dict:
    """Turn ``['Set5=/data/Set5', ...]`` into ``{'Set5': '/data/Set5'}``; ``what`` names the option in errors."""
    mapping = {}
    for item in items or []:
        key, sep, value = item.partition('=')
        if not sep or not key or not value:
            raise InputError(f'{what}: expected KEY=PATH, got {item!r}')
        try:
            mapping[key_type(key)] = value
        except ValueError as err:
            raise InputError(f'{what}: bad key in {item!r} ({err})') from err
    return mapping


def run(parser: argparse.ArgumentParser, main: Callable[[argparse.Namespace], object],
        argv: Optional[Sequence[str]] = None) -> int:
    """Parse arguments, log at INFO and run ``main``; return the exit status (0). User mistakes and Ctrl-C end in
    one clear line, not a traceback (``SystemExit``, as argparse's own errors)."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
    try:
        result = main(args)
    except UserError as err:
        parser.exit(2, f'{parser.prog}: error: {err}\n')
    except KeyboardInterrupt as err:
        partial = getattr(err, 'partial', None)
        parser.exit(INTERRUPTED, f'\ninterrupted: {partial} kept; run again with --resume or --redo\n' if partial
                    else '\ninterrupted before any output was started: nothing to resume\n')
    logging.getLogger(parser.prog).info('done: %s', result)
    return 0
