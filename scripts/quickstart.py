"""Quickstart entry point: see ``cadyq_plugin/tools/quickstart.py`` (``--help`` for options)."""
import sys

from cadyq_plugin.tools.quickstart import main

if __name__ == '__main__':
    sys.exit(main())
