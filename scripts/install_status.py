"""What ``scripts/install.sh`` may skip: ``version DIST`` prints an installed distribution's version (exit 1 when
it is missing); ``plugin`` exits 0 when this checkout is installed (editable) with every requirement present and
not older than ``setup.py``. Run with ``python -I`` from the repository root; it imports nothing heavy.
"""
import importlib.metadata as metadata
import importlib.util
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def version(name):
    """The installed version of distribution ``name``, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def plugin_is_current(repo=REPO):
    """True when ``cadyq_plugin`` imports from ``repo``, its requirements (test extra included) are installed and
    its metadata was written after the last change of ``setup.py``."""
    try:
        dist = metadata.distribution('cadyq-plugin')
    except metadata.PackageNotFoundError:
        return False
    spec = importlib.util.find_spec('cadyq_plugin')
    if spec is None or spec.origin is None:
        return False
    if os.path.dirname(os.path.dirname(os.path.realpath(spec.origin))) != os.path.realpath(repo):
        return False
    names = [re.match(r'[A-Za-z0-9_.-]+', req).group() for req in dist.requires or []]
    if any(version(name) is None for name in names):
        return False
    written = [dist.locate_file(f) for f in dist.files or [] if f.name == 'METADATA']
    return bool(written) and os.path.getmtime(written[0]) >= os.path.getmtime(os.path.join(repo, 'setup.py'))


def main(argv):
    if argv[:1] == ['version'] and len(argv) == 2:
        found = version(argv[1])
        if found is None:
            return 1
        print(found.split('+')[0])
        return 0
    if argv == ['plugin']:
        return 0 if plugin_is_current() else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
