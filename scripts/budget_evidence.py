"""Bit-budget evidence entry point: see ``cadyq_plugin/tools/budget_evidence.py`` (``--help`` for options).

Needs matplotlib (``pip install -e .[plots]``). Run from the repository root, e.g.
``OMP_NUM_THREADS=1 python scripts/budget_evidence.py --workdir budget_workdir``.
"""
import sys

from cadyq_plugin.tools.budget_evidence import main

if __name__ == '__main__':
    sys.exit(main())
