#!/usr/bin/env bash
# The quickstart: installs everything (scripts/install.sh), then trains FP -> PAMS -> CADyQ on a small set built
# from scikit-image photos, tests each stage and prints PSNR / SSIM / FAB / BitOPs. Options: --arch, --workdir,
# --iters (see python scripts/quickstart.py --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
PYTHON=${PYTHON:-python}
$PYTHON scripts/quickstart.py "$@"
