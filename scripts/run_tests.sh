#!/usr/bin/env bash
# The test command: installs everything (scripts/install.sh), then runs the whole suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
PYTHON=${PYTHON:-python}
$PYTHON -m pytest -q -p no:cacheprovider tests "$@"
