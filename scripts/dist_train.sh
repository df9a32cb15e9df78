#!/usr/bin/env bash
# Distributed training with torchrun (BasicSR's --launcher pytorch), on GPUs (nccl) or CPUs (gloo).
#
#   scripts/dist_train.sh NPROC OPTIONS.yml [basicsr train arguments ...]
#
# One node: NPROC processes (one per GPU), torchrun picks a free port:
#   scripts/dist_train.sh 4 options/train_edsrbaseline_cadyq.yml
#   scripts/dist_train.sh 4 options/train_edsrbaseline_cadyq.yml --auto_resume
# Several nodes: run the same command on every node (torchrun's c10d rendezvous assigns the node ranks):
#   NNODES=2 MASTER_ADDR=node0 MASTER_PORT=29500 scripts/dist_train.sh 8 options/train_edsrbaseline_cadyq.yml
#
# Environment: NNODES (default 1), MASTER_ADDR / MASTER_PORT (rendezvous host:port of a multi-node run, default
# port 29500), RDZV_ID (run id shared by the nodes, default cadyq), PYTHON (interpreter, default python).
# The backend is dist_params.backend of the options file when set, else nccl with CUDA and gloo without.
set -euo pipefail

if [ $# -lt 2 ]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 2
fi
NPROC=$1
OPTIONS=$2
shift 2
NNODES=${NNODES:-1}

if [ "$NNODES" -gt 1 ]; then
    : "${MASTER_ADDR:?a multi-node run needs MASTER_ADDR (the rendezvous host, e.g. the first node)}"
    RENDEZVOUS=(--nnodes "$NNODES" --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:${MASTER_PORT:-29500}"
                --rdzv-id "${RDZV_ID:-cadyq}")
else
    RENDEZVOUS=(--standalone)
fi

exec "${PYTHON:-python}" -m torch.distributed.run "${RENDEZVOUS[@]}" --nproc_per_node "$NPROC" \
    --no-python basicsr train -opt "$OPTIONS" --launcher pytorch "$@"
