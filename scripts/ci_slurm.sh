#!/usr/bin/env bash
# The Slurm part of CI: start a one-node Slurm, run tests/integration/test_slurm.py against it, stop every daemon
# this script started (by PID, in a trap, whatever happens).
#
#   bash scripts/ci_slurm.sh [extra pytest args]
#
# Exit status: pytest's. Where a local Slurm cannot run (not root, no apt-get) it prints "SKIPPED: <why>" and
# exits 0, unless HIZFO_SLURM_REQUIRED=1 (then 77).
set -uo pipefail
cd "$(dirname "$0")/.."

state_dir=$(mktemp -d /tmp/hizfo-ci-slurm.XXXXXX)
stop() { bash scripts/slurm/stop_local_slurm.sh "$state_dir" >&2 || true; }
trap stop EXIT INT TERM

bash scripts/slurm/start_local_slurm.sh "$state_dir" >/dev/null
rc=$?
if [[ $rc -eq 77 ]]; then
  echo "SKIPPED: the Slurm integration tests need a local Slurm, which cannot be started here (see above)"
  [[ ${HIZFO_SLURM_REQUIRED:-0} == 1 ]] && exit 77
  exit 0
elif [[ $rc -ne 0 ]]; then
  echo "FAILED: could not start a local Slurm (logs in $state_dir/log)" >&2
  tail -n 30 "$state_dir"/log/*.log >&2 2>/dev/null
  exit "$rc"
fi

# the tests use this cluster instead of starting their own
export HIZFO_SLURM_DIR=$state_dir
# shellcheck disable=SC1091
source "$state_dir/env"
export TQDM_DISABLE=1 WANDB_MODE=offline HF_HUB_OFFLINE=1
# the project's venv when scripts/setup.sh made one (Slurm jobs run the submitting interpreter)
python=${PYTHON:-python}
[[ -z ${PYTHON:-} && -x .venv/bin/python ]] && python=.venv/bin/python
"$python" -m pytest -q -m slow tests/integration/test_slurm.py "$@"
