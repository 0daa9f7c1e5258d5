#!/usr/bin/env bash
# Move the locked environment forward on purpose: re-resolve requirements.lock to the newest versions that
# pyproject.toml's ranges allow (uv pip compile, hashes, universal over Python >= 3.10, torch left out), install the
# candidate into a scratch venv, run the whole suite there, and replace requirements.lock only when it is green.
# Usage: bash scripts/update_lock.sh [--keep]
#   --keep  keep today's pins wherever pyproject.toml still allows them (after adding or narrowing a dependency);
#           without it every package moves to its newest allowed release.
# Takes the suite's time (about 15 min on 2 cores) plus an install. Commit the new lock with the suite's result.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
work=.lock-candidate
rm -rf "$work"; mkdir -p "$work"
"$PY" -m venv "$work/tools"
"$work/tools/bin/python" -m pip install -q "uv>=0.9"
torch_pin=$("$PY" -c "import sys; sys.path.insert(0, 'hizfo'); import lockfile; print(lockfile._torch_pin_from_pyproject())")
echo "torch==$torch_pin" > "$work/constraints.txt"
upgrade=(--upgrade)
if [ "${1:-}" = "--keep" ] && [ -f requirements.lock ]; then
  cp requirements.lock "$work/requirements.lock"; upgrade=()
fi
"$work/tools/bin/uv" pip compile pyproject.toml --extra dev --universal --python-version 3.10 --generate-hashes \
  --no-emit-package torch -c "$work/constraints.txt" "${upgrade[@]}" --quiet -o "$work/requirements.lock"
"$PY" hizfo/lockfile.py seal "$work/requirements.lock"
if [ -f requirements.lock ] && diff -q <(sed '1,/^# --- end of header ---$/d' requirements.lock | grep -v '^#') \
     <(sed '1,/^# --- end of header ---$/d' "$work/requirements.lock" | grep -v '^#') >/dev/null \
   && [ "$("$PY" hizfo/lockfile.py check requirements.lock 2>&1)" = "" ]; then
  echo "update_lock: nothing moved; requirements.lock is current"; rm -rf "$work"; exit 0
fi
echo "update_lock: candidate resolved; running the suite against it (venv $work/venv)"
if HIZFO_VENV="$work/venv" HIZFO_LOCK="$work/requirements.lock" bash scripts/test.sh; then
  cp "$work/requirements.lock" requirements.lock
  "$work/venv/bin/python" -c "import transformers, peft, torch; print('update_lock: requirements.lock replaced (green):', 'transformers', transformers.__version__, 'peft', peft.__version__, 'torch', torch.__version__)"
  rm -rf "$work"
else
  echo "update_lock: the suite failed on the candidate; requirements.lock unchanged (candidate kept in $work/)" >&2
  exit 1
fi
