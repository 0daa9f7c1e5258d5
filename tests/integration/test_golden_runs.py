"""What a run computes, kept: every method a run can name (conf/method/*.yaml: the registry's methods, the
controls, zero_shot) trains 3 steps on the default tiny model and task (tiny-opt, toy; smaller splits), one thread,
in this process, and its per-step training losses and final evaluation metrics must match the committed golden
values in golden/tiny_opt_toy.json.

Not a hash of the final parameters: CPUs differ in their floating-point kernels (vector width, fused multiply-add),
so the values are compared with a relative tolerance that such differences pass and a changed computation does
not. Measured on an AMD EPYC (avx2, no avx512), torch 2.13: the golden values recomputed with torch's scalar
kernels (ATEN_CPU_CAPABILITY=default) or MKL's portable path (MKL_CBWR=COMPATIBLE) move every method's losses by
<= 1.8e-7 relative, except Hi-ZFO's ZO-estimating runs (hizfo 3.4e-5, hizfo_random_dir 1.7e-4 under
ATEN_CPU_CAPABILITY=default); no metric moved. Hence RTOL 1e-5 (50x margin), 1e-3 for those two (RTOL_OF).

Regenerate the golden values ONLY when a change is meant to alter what runs compute (and say so in the commit):

    HIZFO_UPDATE_GOLDEN=1 OMP_NUM_THREADS=1 .venv/bin/python -m pytest -p no:cacheprovider -q \\
        tests/integration/test_golden_runs.py

rewrites golden/tiny_opt_toy.json (each run test skips, saying so); review ``git diff`` before committing it.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT

pytestmark = pytest.mark.slow           # ~1.5 s of CPU per method, ~20 s for the family on the 2-core box
GOLDEN = Path(__file__).parent / "golden" / "tiny_opt_toy.json"
STEPS = 3
RTOL = 1e-5                             # measured: other CPU kernels move these losses <= 2e-7 (docstring)
# Hi-ZFO's ZO estimate divides a loss difference by 2·eps (eps = 1e-3): torch's other CPU kernels move its
# losses up to 1.7e-4 relative at step 3 (measured: docstring), as much as the whole ZO part adds at 3 steps
# (hizfo vs hizfo_zo_off: 3e-5), so these guard Hi-ZFO's first-order part, profiling and selection, not its ZO part
RTOL_OF = {"hizfo": 1e-3, "hizfo_random_dir": 1e-3}
ATOL = 1e-6                             # metrics that are 0 (rouge2, exact_match on 3 steps)
UPDATE = os.environ.get("HIZFO_UPDATE_GOLDEN") == "1"
# every method a run can name: the registry's schemas and the controls composed from them (conf/method/*.yaml;
# tests/unit/project/test_structure.py checks each yaml names a registered schema)
RUN_METHODS = sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml"))
# smaller toy splits than the default (2000 / 100) keep the family near 1 s of CPU per method: the training
# steps, the evaluation and every method's code path are the same, on fewer encoded examples
SMALLER = ["task.options.n_train=64", "task.options.n_eval=20"]


def golden_overrides(method: str, results: Path) -> list[str]:
    """The default run (tiny-opt, toy) of ``method`` for 3 steps (zero_shot trains none), every step's loss kept,
    on the smaller toy splits."""
    steps = 0 if method == "zero_shot" else STEPS      # zero_shot refuses max_steps > 0
    return [f"method={method}", f"method.max_steps={steps}", "logger=none", "num_threads=1", "curve_every=1",
            f"results_dir={results}", *SMALLER]


def computed(method: str, tmp_path: Path) -> dict[str, list[float] | dict[str, float]]:
    """The run's per-step training losses and its final metrics, from its record (in process: seconds)."""
    from hizfo.run.session import RunInputs, compose, run
    overrides = golden_overrides(method, tmp_path / "runs")
    previous = torch.get_num_threads()
    try:
        record = run(compose(overrides), RunInputs(overrides=tuple(overrides), output_dir=tmp_path / "hydra"))
    finally:
        torch.set_num_threads(previous)
    assert record["status"] == "ok", record.get("error")
    losses = [loss for _, loss in record["curve"]["train_loss"]]     # curve_every=1: one point per step
    return {"losses": losses, "metrics": {k: float(v) for k, v in sorted(record["metrics"].items())}}


def mismatches(got: dict, want: dict, rtol: float = RTOL, atol: float = ATOL) -> list[str]:
    """Each value of ``got`` that differs from ``want`` beyond the tolerance, as ``what: got vs want``."""
    if len(got["losses"]) != len(want["losses"]):
        return [f"steps: {len(got['losses'])} losses vs {len(want['losses'])}"]
    if set(got["metrics"]) != set(want["metrics"]):
        return [f"metric names: {sorted(got['metrics'])} vs {sorted(want['metrics'])}"]
    pairs = [(f"loss at step {i + 1}", g, w) for i, (g, w) in enumerate(zip(got["losses"], want["losses"]))]
    pairs += [(f"metric {k}", got["metrics"][k], want["metrics"][k]) for k in sorted(want["metrics"])]
    return [f"{what}: {g!r} vs golden {w!r}" for what, g, w in pairs
            if not math.isclose(g, w, rel_tol=rtol, abs_tol=atol)]


def read_golden() -> dict:
    return json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}


def write_golden(method: str, values: dict) -> None:
    table = read_golden()
    table[method] = values
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(dict(sorted(table.items())), indent=1) + "\n")


@pytest.mark.parametrize("method", RUN_METHODS)
def test_a_method_computes_its_golden_losses_and_metrics(method, tmp_path):
    got = computed(method, tmp_path)
    if UPDATE:
        write_golden(method, got)
        pytest.skip(f"HIZFO_UPDATE_GOLDEN=1: rewrote {GOLDEN.name}[{method}]; review git diff")
    want = read_golden().get(method)
    assert want is not None, f"no golden values for {method} in {GOLDEN} (regenerate: module docstring)"
    assert len(got["losses"]) == (0 if method == "zero_shot" else STEPS)
    wrong = mismatches(got, want, rtol=RTOL_OF.get(method, RTOL))
    assert not wrong, f"{method} computes something else than before: {wrong}"


def test_the_golden_file_covers_exactly_the_registered_methods():
    # a method added to (or dropped from) the registry needs its golden values (regenerate: module docstring)
    assert {"hizfo", "hizfo_random_dir", "hizfo_zo_off", "zero_shot", "bilevel_zofo"} <= set(RUN_METHODS)
    assert set(read_golden()) == set(RUN_METHODS), sorted(set(read_golden()) ^ set(RUN_METHODS))


def test_the_comparison_fails_on_a_loss_off_by_more_than_the_tolerance():
    want = {"losses": [5.5, 5.25], "metrics": {"rouge1": 23.5, "exact_match": 0.0}}
    assert mismatches(want, want) == []
    near = {"losses": [5.5 * (1 + RTOL / 10), 5.25], "metrics": {"rouge1": 23.5, "exact_match": 1e-9}}
    assert mismatches(near, want) == []
    off = {"losses": [5.5, 5.25 * (1 + 10 * RTOL)], "metrics": {"rouge1": 23.5, "exact_match": 0.0}}
    assert mismatches(off, want) == [f"loss at step 2: {5.25 * (1 + 10 * RTOL)!r} vs golden 5.25"]
    assert mismatches({**want, "losses": [5.5]}, want) == ["steps: 1 losses vs 2"]
    assert mismatches({**want, "metrics": {"rouge1": 23.5}}, want)[0].startswith("metric names")
