#!/usr/bin/env bash
# One resumable slice of a CPU study, run from a git worktree pinned at the study's commit, so that every run of a
# study that takes several sessions runs the same code whatever main has become since (the records say which commit:
# provenance git_sha; tests/unit/apps/test_study2_claims.py checks that every study-2 record ran the pinned code).
#
#   bash scripts/study_slice.sh smollm2_study2_cpu 41f457d1fe39a5aa7c73c5e4a260971b52e1db1f --hours 2
#
# The worktree (${TMPDIR:-/tmp}/hizfo-pinned-<commit>) shares this checkout's venv; its runs/, logs/ and checkpoints/
# of the preset's results folder are links to this checkout's, so records land here, ready to commit, and a slice
# resumes from the committed records and the checkpoints left here. Arguments after the commit go to
# scripts/run_study.py (--hours, --workers, --dry-run, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  echo "usage: bash scripts/study_slice.sh PRESET COMMIT [run_study.py arguments]" >&2; exit 2
fi
preset=$1; pin=$2; shift 2
main=$(pwd)
python="${HIZFO_VENV:-$main/.venv}/bin/python"
yaml="conf/experiment/$preset.yaml"
[ -f "$yaml" ] || { echo "experiment=$preset: no such preset under conf/experiment/" >&2; exit 2; }
git cat-file -e "$pin^{commit}" 2>/dev/null || { echo "commit $pin: not in this repository" >&2; exit 2; }
runs=$(sed -n 's/^results_dir: *//p' "$yaml")          # e.g. results/smollm2_cpu_study2/runs
[ -n "$runs" ] || { echo "$yaml: no results_dir" >&2; exit 2; }
study=$(dirname "$runs")
tree="${TMPDIR:-/tmp}/hizfo-pinned-$(git rev-parse "$pin")"
[ -d "$tree" ] || git worktree add --detach "$tree" "$pin" >/dev/null
for sub in runs logs checkpoints; do
  mkdir -p "$main/$study/$sub" "$tree/$study"
  if [ -e "$tree/$study/$sub" ] && [ ! -L "$tree/$study/$sub" ]; then
    echo "$tree/$study/$sub exists and is not a link: remove it or the worktree" >&2; exit 2
  fi
  ln -sfn "$main/$study/$sub" "$tree/$study/$sub"
done
echo "study $preset at $(git -C "$tree" rev-parse --short HEAD) in $tree; records under $main/$runs"
cd "$tree"
exec "$python" scripts/run_study.py "$preset" "$@"
