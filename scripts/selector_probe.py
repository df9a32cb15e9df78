"""Selector instrumentation entry point: see ``cadyq_plugin/tools/selector_probe.py`` (``--help`` for options).

Run in the folder the options file's paths are relative to, e.g.
``python scripts/selector_probe.py -opt options/train_carn_cadyq.yml --force_yml train:bit_opt:target_fab=6``.
"""
import sys

from cadyq_plugin.tools.selector_probe import main

if __name__ == '__main__':
    sys.exit(main())
