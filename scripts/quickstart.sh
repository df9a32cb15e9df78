#!/usr/bin/env bash
# The quickstart: installs everything (scripts/install.sh; what is installed already is kept), then trains
# FP -> PAMS -> CADyQ on a small set built from scikit-image photos, tests each stage and prints PSNR / SSIM / FAB /
# BitOPs and the wall time of each phase. Options: --arch, --workdir, --iters, --batch, --gt-size (see
# basicsr quickstart --help).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS=0
bash scripts/install.sh
install_seconds=$SECONDS
echo "[quickstart] install: ${install_seconds} s"
PYTHON=${PYTHON:-python}
$PYTHON -m cadyq_plugin.cli quickstart --install-seconds "$install_seconds" "$@"
