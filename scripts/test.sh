#!/usr/bin/env bash
# Set up (scripts/setup.sh --dev) and run the whole test suite: unit tests, then the slow integration tests
# (the default run end to end, multiruns, checkpoint/resume, a real one-node Slurm, the real SmolLM2 model).
# Usage: bash scripts/test.sh [pytest args]; FAST=1 runs only tests/unit (the slowest 20 tests are listed at the end).
# HIZFO_VENV picks another venv (scripts/update_lock.sh runs the suite in a candidate's).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev || exit 1
export WANDB_MODE=offline WANDB_SILENT=true TQDM_DISABLE=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
paths=(tests/unit)
[ "${FAST:-0}" = "1" ] || paths+=(tests/integration tests/distributed)   # distributed: torchrun, 2 gloo processes
"${HIZFO_VENV:-.venv}/bin/python" -m pytest -q --strict-markers --durations=20 "${paths[@]}" "$@"
code=$?
# pytest exits 5 when it collected no test: that is not a failure of the code under test
if [ $code -eq 5 ]; then echo "no tests collected"; exit 0; fi
exit $code
