"""benchmarks/gpu_check.py without running a model: a cell's checks on its record, and the --minutes plan.
(The whole matrix runs in tests/integration/test_gpu_check.py.)"""
from __future__ import annotations

import pytest

from benchmarks.gpu_check import CPU_SMOKE, GPU, BadInput, Cell, build_cells, judge, method_names, plan

OK = {"status": "ok", "costs": {"steps": 10, "train_seconds": 2.0, "setup_seconds": 1.0},
      "final_train_loss": 2.5, "curve": {"train_loss": [[10, 2.5]]}, "final_params_sha256": "a"}


def cell(name: str) -> Cell:
    return next(c for c in build_cells(method_names(), inject_failure=False) if c.name == name)


def test_an_ok_record_passes_and_gives_the_step_time():
    c = cell("full_ft/bf16")
    judge(c, OK, {})
    assert c.status == "ok" and c.facts["step_s"] == pytest.approx(0.1)


@pytest.mark.parametrize("change, problem", [
    ({"status": "failed", "error": "TrainingDiverged: diverged"}, "record failed: TrainingDiverged"),
    ({"final_train_loss": float("nan")}, "training loss not finite"),
    ({"curve": {"train_loss": [[10, float("inf")]]}}, "training loss not finite"),
    ({"costs": {"steps": 4}}, "ran 4 steps"),
])
def test_a_bad_record_fails_the_cell(change, problem):
    c = cell("full_ft/bf16")
    judge(c, {**OK, **change}, {})
    assert c.status == "failed" and problem in c.problems[0], c.problems


def test_hizfo_must_move_99_percent_of_theta_fo_in_bf16_but_fp32_only_reports():
    moved = {**OK, "method_summary": {"fo_changed_fraction_min": 0.97}}
    for name, status in (("hizfo/bf16", "failed"), ("hizfo/bf16-mixed", "failed"), ("hizfo/fp32", "ok")):
        c = cell(name)
        judge(c, moved, {})
        assert c.status == status and c.facts["fo_changed_min"] == 0.97, name
    c = cell("hizfo/bf16")
    judge(c, {**OK, "method_summary": {"fo_changed_fraction_min": None}}, {})     # an empty Θ_FO
    assert c.status == "failed" and "no Θ_FO step" in c.problems[0]


def test_mezo_at_lr_0_compares_its_weights_with_zero_shot():
    for reference, status in (("a", "ok"), ("b", "failed")):
        c = cell("mezo/bf16+lr0")
        judge(c, OK, {"zero_shot/bf16": {"status": "ok", "final_params_sha256": reference}})
        assert c.status == status and c.facts["weights_bit_identical"] == (reference == "a")
    c = cell("mezo/bf16+lr0")
    judge(c, OK, {})
    assert c.status == "failed" and "no ok zero_shot/bf16" in c.problems[0]


def test_the_matrix_runs_zero_shot_before_mezo_at_lr_0():
    names = [c.name for c in build_cells(method_names(), inject_failure=True)]
    assert names[0] == "full_ft/fp32+injected"
    assert names.index("zero_shot/bf16") < names.index("mezo/bf16+lr0")
    assert len(names) == 10 * 3 + 3 + 1 + 1


def test_minutes_drop_the_non_core_cells_first_and_refuse_less_than_one_cell():
    cells = build_cells(method_names(), inject_failure=False)
    kept, measured, dropped = plan(cells, GPU, 8)
    assert len(kept) == len(cells) and measured == ["bf16", "bf16-mixed", "fp32"] and not dropped
    kept, measured, dropped = plan(cells, GPU, 3)
    assert {c.method for c in kept} >= {"full_ft", "hizfo", "mezo"} and dropped
    assert all(c.method in ("full_ft", "hizfo", "mezo", "zero_shot") for c in kept[:11])
    assert any(name.startswith("lora/") for name in dropped)
    with pytest.raises(BadInput, match="--minutes: 0.1 is below what one cell needs"):
        plan(cells, CPU_SMOKE, 0.1)
