#!/usr/bin/env bash
# Set up (scripts/setup.sh --dev) and run the whole test suite: unit tests, then the slow integration tests
# (the default run end to end, multiruns, checkpoint/resume, a real one-node Slurm, the real SmolLM2 model).
# Usage: bash scripts/test.sh [pytest args] (the slowest 20 tests are listed at the end, by wall seconds and by CPU
# seconds: tests/cpu_times.py, robust on a shared box). FAST=1 runs the fast tier:
# tests/unit without the tests marked slow or distributed (pyproject.toml), under 3 minutes on the 2-core box;
# run whole (no pytest args), it also fails if a module of hizfo/, baselines/, analysis/ or scripts/ is loaded by
# no fast test (tests/tier_trace.py; HIZFO_FAST_TRACE=tests/fast_tier.txt rewrites the committed map).
# HIZFO_VENV picks another venv (scripts/update_lock.sh runs the suite in a candidate's).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev || exit 1
export WANDB_MODE=offline WANDB_SILENT=true TQDM_DISABLE=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if [ "${FAST:-0}" = "1" ]; then
  args=(tests/unit -m "not slow and not distributed")
  [ $# -gt 0 ] || export HIZFO_FAST_TRACE=${HIZFO_FAST_TRACE:-${TMPDIR:-/tmp}/hizfo-fast-tier.txt}
else
  args=(tests/unit tests/integration tests/distributed)   # distributed: torchrun, 2 gloo processes
fi
"${HIZFO_VENV:-.venv}/bin/python" -m pytest -q --strict-markers --durations=20 "${args[@]}" "$@"
code=$?
# pytest exits 5 when it collected no test: that is not a failure of the code under test
if [ $code -eq 5 ]; then echo "no tests collected"; exit 0; fi
exit $code
