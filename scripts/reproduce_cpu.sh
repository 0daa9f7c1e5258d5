#!/usr/bin/env bash
# CPU-scale reproduction: run every *_cpu preset, then regenerate the tables and plots from the records.
#
#   scripts/reproduce_cpu.sh                  # all seven presets (86 runs), then the analysis
#   scripts/reproduce_cpu.sh table1 fig3      # only these presets (the analysis still reads every record)
#   SEEDS=0,1,2 scripts/reproduce_cpu.sh      # several seeds: the tables then show mean ± std
#
# Everything lands under $OUT (default outputs/reproduce_cpu/, which git ignores): runs/ (one JSON record per
# run), logs/ (one log per preset), tables/ (Markdown, LaTeX, CSV, and the view against the paper), figures/
# (PNG + PDF), RUN_INFO.md. OUT=results/cpu refreshes the committed copy instead (only when asked).
# Runs with the project's venv python (.venv, or HIZFO_VENV), whether or not a venv is activated.
# A run whose ok record exists is skipped, so the script resumes where it stopped. The twins use tiny
# stand-in models on the offline toy task: they show that the pipeline works and how trends look at toy
# scale; their numbers are not the paper's.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-outputs/reproduce_cpu}"
PY="${HIZFO_VENV:-.venv}/bin/python"
if [ ! -x "$PY" ]; then
  echo "error: $PY not found: run bash scripts/setup.sh first (or set HIZFO_VENV)" >&2
  exit 2
fi
ALL=(table1 table2 table3 table4 table5 fig3 fig4)
if [ "$#" -gt 0 ]; then PRESETS=("$@"); else PRESETS=("${ALL[@]}"); fi
SEEDS="${SEEDS:-0}"
export TQDM_DISABLE=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p "$OUT/logs"

failed=()
info="$OUT/RUN_INFO.md"
{
  echo "# CPU-scale reproduction run"
  echo
  echo "- started: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (uncommitted changes)')"
  echo "- machine: $(nproc --all) CPU cores, $("$PY" -c 'import torch; print("CUDA " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")')"
  echo "- seeds: $SEEDS"
  echo
  echo "| preset | wall-clock (s) | exit |"
  echo "|---|---|---|"
} > "$info"

for name in "${PRESETS[@]}"; do
  preset="${name%_cpu}_cpu"
  echo "== $preset"
  start=$(date +%s)
  "$PY" run.py -m "experiment=$preset" "seed=$SEEDS" "results_dir=$OUT/runs" > "$OUT/logs/$preset.log" 2>&1
  status=$?
  echo "| $preset | $(( $(date +%s) - start )) | $status |" >> "$info"
  if [ "$status" -ne 0 ]; then
    failed+=("$preset")
    echo "   some runs of $preset failed (exit $status): see $OUT/logs/$preset.log" >&2
  fi
done

echo "== analysis"
"$PY" -m analysis.tables --results "$OUT/runs" --out "$OUT/tables" > "$OUT/logs/analysis_tables.log" 2>&1 \
  || failed+=("analysis.tables")
"$PY" -m analysis.sweeps --results "$OUT/runs" --out "$OUT/figures" > "$OUT/logs/analysis_sweeps.log" 2>&1 \
  || failed+=("analysis.sweeps")
echo "- finished: $(date -u +%Y-%m-%dT%H:%M:%SZ)" >> "$info"

if [ "${#failed[@]}" -gt 0 ]; then
  echo "- failed: ${failed[*]} (logs in $OUT/logs/)" >> "$info"
  echo "done with failures: ${failed[*]}; tables in $OUT/tables, plots in $OUT/figures" >&2
  exit 1
fi
echo "done: tables in $OUT/tables, plots in $OUT/figures, run info in $info"
