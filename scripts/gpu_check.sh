#!/usr/bin/env bash
# Check this machine end to end before a long GPU sweep (benchmarks/gpu_check.py): every method x precision through
# run.py at OPT-1.3B shape, then the cost ratios to Full FT; installs what is missing offline from wheelhouse/.
# Usage: scripts/gpu_check.sh [--out DIR] [--minutes N] [--cpu-smoke] ...   (python -m benchmarks.gpu_check --help)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
export TQDM_DISABLE=${TQDM_DISABLE:-1} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1}
export WANDB_MODE=${WANDB_MODE:-disabled}
exec "$PY" -m benchmarks.gpu_check "$@"
