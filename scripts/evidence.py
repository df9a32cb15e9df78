"""Content evidence entry point: see ``cadyq_plugin/tools/evidence.py`` (``--help`` for options).

Needs matplotlib (``pip install -e .[plots]``). Run from the repository root, e.g.
``python scripts/evidence.py --workdir evidence_workdir`` (figures go to ``docs/evidence/``).
"""
import sys

from cadyq_plugin.tools.evidence import main

if __name__ == '__main__':
    sys.exit(main())
