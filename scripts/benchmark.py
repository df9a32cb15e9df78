"""Benchmark entry point: see ``cadyq_plugin/tools/benchmark.py`` (``--help`` for options)."""
import sys

from cadyq_plugin.tools.benchmark import main

if __name__ == '__main__':
    sys.exit(main())
