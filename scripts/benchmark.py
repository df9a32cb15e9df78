"""A launcher, kept because issues and docs name this path: ``python scripts/benchmark.py ARGS`` runs
``basicsr benchmark ARGS`` (cadyq_plugin/tools/benchmark.py)."""
import sys

from cadyq_plugin.cli import main

sys.exit(main(['benchmark'] + sys.argv[1:]))
