#!/usr/bin/env bash
# Install everything the plugin needs into the current Python environment.
# torch/torchvision go first: building basicsr's sdist would otherwise pull a torch of its own choosing.
# Override the pins with TORCH_SPEC, e.g. TORCH_SPEC="torch==2.5.1 torchvision==0.20.1".
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
if ! $PYTHON -c "import torch, torchvision" >/dev/null 2>&1; then
  # shellcheck disable=SC2086
  $PYTHON -m pip install --quiet $TORCH_SPEC
fi
$PYTHON -m pip install --quiet -e '.[test]'
