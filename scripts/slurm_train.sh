#!/usr/bin/env bash
# Distributed training under Slurm (BasicSR's --launcher slurm): srun starts one process per task.
#
#   scripts/slurm_train.sh PARTITION JOB_NAME OPTIONS.yml [basicsr train arguments ...]
#
# 8 GPUs on one node (default), or 16 GPUs on two nodes:
#   scripts/slurm_train.sh gpu cadyq options/train_edsrbaseline_cadyq.yml
#   TASKS=16 TASKS_PER_NODE=8 scripts/slurm_train.sh gpu cadyq options/train_edsrbaseline_cadyq.yml --auto_resume
# CPU only (gloo), 4 processes:
#   TASKS=4 TASKS_PER_NODE=4 GPUS_PER_NODE=0 scripts/slurm_train.sh cpu cadyq options/train_edsrbaseline_cadyq.yml
#
# Environment: TASKS (processes in all, default 8), TASKS_PER_NODE (default TASKS, at most 8), GPUS_PER_NODE
# (default TASKS_PER_NODE; 0 requests none), CPUS_PER_TASK (default 6), SRUN_ARGS (more srun options, each
# written --option=value). The master is the first node of the allocation, its port dist_params.port of the
# options file (else MASTER_PORT, else 29500); the backend dist_params.backend, else nccl with CUDA, gloo without.
set -euo pipefail

if [ $# -lt 3 ]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 2
fi
PARTITION=$1
JOB_NAME=$2
OPTIONS=$3
shift 3
TASKS=${TASKS:-8}
TASKS_PER_NODE=${TASKS_PER_NODE:-$(( TASKS < 8 ? TASKS : 8 ))}
GPUS_PER_NODE=${GPUS_PER_NODE:-$TASKS_PER_NODE}
CPUS_PER_TASK=${CPUS_PER_TASK:-6}

GRES=()
if [ "$GPUS_PER_NODE" -gt 0 ]; then
    GRES=(--gres=gpu:"$GPUS_PER_NODE")
fi

# shellcheck disable=SC2086  # SRUN_ARGS is a list of options
exec srun --partition="$PARTITION" --job-name="$JOB_NAME" ${GRES[@]+"${GRES[@]}"} --ntasks="$TASKS" \
    --ntasks-per-node="$TASKS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK" --kill-on-bad-exit=1 ${SRUN_ARGS:-} \
    basicsr train -opt "$OPTIONS" --launcher slurm "$@"
