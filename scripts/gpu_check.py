"""A launcher, kept because issues and docs name this path: ``python scripts/gpu_check.py ARGS`` runs
``basicsr gpu-check ARGS`` (cadyq_plugin/tools/gpu_check.py)."""
import sys

from cadyq_plugin.cli import main

sys.exit(main(['gpu-check'] + sys.argv[1:]))
