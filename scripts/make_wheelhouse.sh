#!/usr/bin/env bash
# Build wheelhouse/ (git-ignored) on a machine that reaches the package registries, for a GPU machine that does not:
# the wheels benchmarks/gpu_check.py imports and a stock CUDA PyTorch image lacks (torch, transformers, peft,
# accelerate, numpy, PyYAML, regex, tqdm come with the image), for Linux x86_64 and Python 3.10-3.12.
# Then copy the repository with wheelhouse/ to the GPU machine; scripts/gpu_check.sh installs from it offline.
#   scripts/make_wheelhouse.sh          # what the check imports: hydra-core, omegaconf, rouge-score + deps (~3 MiB)
#   scripts/make_wheelhouse.sh --all    # also wandb and submitit with their dependencies, for real sweeps (~31 MiB)
# datasets is never included: its pyarrow alone is ~42 MiB per Python version, past the 60 MiB the repository and
# the wheelhouse together should stay under; the check runs task=toy and needs no datasets.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=wheelhouse
PYVERSIONS=(3.10 3.11 3.12)
# what benchmarks/gpu_check.py imports (logger=none, task=toy, launcher=local), resolved with their dependencies
WANTED=("hydra-core>=1.3,<1.4" "omegaconf>=2.3,<2.4" "rouge-score>=0.1.2")
# pure Python, published only as source: built into py3-none-any wheels first, so the resolution below finds them
# (omegaconf 2.3 pins antlr 4.9.*, which has no wheel; rouge-score >= 0.1.2 has none either)
SDIST_ONLY=("antlr4-python3-runtime==4.9.3" "rouge-score==0.1.2")
# in every CUDA PyTorch image (torch, transformers and their dependencies): left out, so the wheelhouse stays small
IMAGE=(numpy pyyaml packaging regex tqdm typing_extensions filelock requests urllib3 certifi idna charset_normalizer
       setuptools)
if [ "${1:-}" = "--all" ]; then
  WANTED+=("wandb>=0.19.10" "submitit" "hydra-submitit-launcher>=1.2")
fi
mkdir -p "$OUT"
"$PY" -m pip wheel -q --no-deps -w "$OUT" "${SDIST_ONLY[@]}"
for v in "${PYVERSIONS[@]}"; do
  "$PY" -m pip download -q --only-binary=:all: --platform manylinux2014_x86_64 --python-version "$v" \
    --find-links "$OUT" -d "$OUT" "${WANTED[@]}"
done
for name in "${IMAGE[@]}"; do
  find "$OUT" -maxdepth 1 -iname "${name}-*.whl" -delete
done
echo "wheelhouse: $(ls "$OUT" | wc -l) wheels, $(du -sh "$OUT" | cut -f1) in $OUT/ (left out, as the image has them: ${IMAGE[*]})"
echo "repository + wheelhouse: $(du -sh --exclude=.git --exclude=.venv --exclude=outputs --exclude=multirun . | cut -f1)"
