"""Quickstart entry point: see ``cadyq_plugin/tools/quickstart.py`` (``--help`` for options)."""
import sys
import time

STARTED = time.time()  # before importing the plugin (torch, basicsr): the summary's start phase

from cadyq_plugin.tools.quickstart import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main(started=STARTED))
