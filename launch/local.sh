#!/usr/bin/env bash
# Run a zeda_rl experiment on this machine: launch/local.sh +experiment=tiny [overrides...]
# On a Ray cluster: launch/slurm.sbatch (Slurm), launch/kuberay.yaml (KubeRay RayJob).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE="${WANDB_MODE:-offline}"
exec .venv/bin/python -m zeda_rl.launch "$@"
