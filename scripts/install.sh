#!/usr/bin/env bash
# Install everything the plugin needs into the current Python environment (PYTHON=... picks the interpreter).
# torch/torchvision go first: basicsr 1.4.2 ships only an sdist whose setup.py lists torch in setup_requires, so
# building it in an isolated environment would pull a torch of its own choosing. It is built against the torch
# installed here instead (--no-build-isolation). Override the pins with TORCH_SPEC, e.g.
# TORCH_SPEC="torch==2.5.1 torchvision==0.20.1". What is installed already is kept, and said so.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
pip_install() { $PYTHON -m pip install --quiet --disable-pip-version-check "$@"; }
status() { $PYTHON -I scripts/install_status.py "$@"; }
if torch=$(status version torch) && torchvision=$(status version torchvision); then
  echo "[install] torch $torch, torchvision $torchvision already installed: skipped"
else
  # shellcheck disable=SC2086
  pip_install $TORCH_SPEC
fi
if basicsr=$(status version basicsr); then
  echo "[install] basicsr $basicsr already installed: skipped"
else
  pip_install numpy cython setuptools wheel
  pip_install --no-build-isolation basicsr==1.4.2
fi
if status plugin; then
  echo "[install] cadyq-plugin already installed from $(pwd), with its requirements: skipped"
else
  pip_install -e '.[test]'
fi
