"""Study 2's claims (analysis/study/study2.py) on hand-written records with per-example predictions: each comparison
decided by its pre-registered test, seeds paired on one CPU model only, Holm per task, claim rows combined, and the
driver writing this claims.md for study-2 records."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from scipy import stats

from analysis.loading import Report
from analysis.study.arms import load_study
from analysis.study.driver import main
from analysis.study.prereg import PER_EPOCH_MARGIN, binomial_two_sided
from analysis.study.stats import CONTRADICTED, INCONCLUSIVE, SUPPORTED, holm
from analysis.study.study2 import NO_RECORDS, claim_rows, combine, shown, study2_outcomes
from analysis.study.study2_spec import ARMS, PRESET

ARM = {arm.name: arm for arm in ARMS}
CPU = "AMD EPYC (family 25, model 17, stepping 1)"


def write(root: Path, arm_name: str, seed: int, correct: list[int], *, seconds: float = 100.0, memory: float = 1.0,
          cpu: str = CPU, epochs: int | None = None) -> None:
    """One wordnet_revdict record of ``arm_name`` and its predictions: example i right when correct[i] == 1."""
    arm = ARM[arm_name]
    method = {"name": arm.method, "epochs": epochs or (3 if arm.method.startswith("hizfo") else 5), "max_steps": None,
              "lr": 2e-5, **({"alpha_mode": "update"} if arm.method.startswith("hizfo") else {}), **dict(arm.keys)}
    record = {"status": "ok", "config": {"experiment": PRESET, "model": {"name": "smollm2-135m"},
                                         "task": {"name": arm.task}, "method": method, "seed": seed,
                                         "variant": arm.variant},
              "metrics": {"exact_match": 100.0 * sum(correct) / len(correct)},
              "costs": {"train_seconds": seconds, "peak_memory_gb": memory, "memory_kind": "cpu_peak_rss"},
              "provenance": {"created": f"2026-12-07T00:00:{seed:02d}+00:00", "cpu_model": cpu}}
    path = root / "smollm2-135m" / arm.task / arm.method / arm.variant / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    rows = [{"index": i, "prediction": "word" if ok else "other", "references": ["word"]} for i, ok in enumerate(correct)]
    path.with_name(f"seed{seed}.predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def outcomes_of(root: Path) -> dict[tuple[str, str, str, str, str], object]:
    frame, _ = load_study(root, Report())
    found = study2_outcomes(frame, {"wordnet_revdict": "exact_match", "pydoc": "rouge1"})
    return {(o.spec.claim, o.spec.better, o.spec.worse, o.spec.measure, o.spec.kind): o for o in found}


def test_claim_1_is_the_exact_mcnemar_test_pooled_over_seeds(tmp_path: Path):
    # 20 examples, 3 seeds: Full FT right on the first 6, MeZO on the first 2 and on example 19 of seed 0
    for seed in range(3):
        write(tmp_path, "s2_wn_full_ft", seed, [1] * 6 + [0] * 14)
        write(tmp_path, "s2_wn_mezo", seed, [1] * 2 + [0] * 17 + [1 if seed == 0 else 0])
    o = outcomes_of(tmp_path)[("1", "s2_wn_full_ft", "s2_wn_mezo", "score", "difference")]
    assert (o.seeds, o.examples) == ((0, 1, 2), 60)
    assert o.note.startswith("discordant 12 : 1") and o.test == "example sign-flip = exact McNemar"
    assert o.p == pytest.approx(binomial_two_sided(12, 13)) == pytest.approx(stats.binomtest(12, 13).pvalue)
    assert o.mean == pytest.approx(100 * 11 / 60) and o.verdict == SUPPORTED
    # seed level beside it: differences 15, 20, 20 (EM %), the t p and the exact sign-flip p over 3 seeds
    assert o.seed_level.t_p == pytest.approx(stats.ttest_1samp([15, 20, 20], 0).pvalue)
    assert o.seed_level.sign_flip_p == pytest.approx(0.25)


def test_a_seed_whose_runs_ran_on_two_cpu_models_is_left_out_and_said(tmp_path: Path):
    for seed in range(3):
        write(tmp_path, "s2_wn_full_ft", seed, [1] * 6 + [0] * 14)
        write(tmp_path, "s2_wn_mezo", seed, [0] * 20, cpu="Intel(R) Xeon(R) Platinum 8480+" if seed == 2 else CPU)
    o = outcomes_of(tmp_path)[("1", "s2_wn_full_ft", "s2_wn_mezo", "score", "difference")]
    assert o.seeds == (0, 1) and o.examples == 40
    assert "seed 2 left out: CPU models differ" in o.note


def test_claim_8_time_by_the_seed_t_test_and_per_epoch_by_its_tost(tmp_path: Path):
    full, hizfo = [500.0, 520.0, 490.0], [300.0, 330.0, 290.0]          # Full FT 5 epochs, Hi-ZFO 3
    for seed in range(3):
        write(tmp_path, "s2_wn_full_ft", seed, [1] * 5 + [0] * 15, seconds=full[seed], memory=2.0 + seed / 10)
        write(tmp_path, "s2_wn_hizfo", seed, [1] * 5 + [0] * 15, seconds=hizfo[seed], memory=1.5)
    found = outcomes_of(tmp_path)
    time = found[("8", "s2_wn_full_ft", "s2_wn_hizfo", "train_seconds", "difference")]
    diffs = [f - h for f, h in zip(full, hizfo)]
    assert time.mean == pytest.approx(sum(diffs) / 3) and time.test == "seed paired t"
    assert time.p == pytest.approx(stats.ttest_1samp(diffs, 0).pvalue) and time.verdict == SUPPORTED
    epoch = found[("8", "s2_wn_full_ft", "s2_wn_hizfo", "seconds_per_epoch", "equivalence")]
    per_epoch = [f / 5 - h / 3 for f, h in zip(full, hizfo)]
    delta = PER_EPOCH_MARGIN * sum(f / 5 for f in full) / 3
    assert epoch.delta == pytest.approx(delta) and epoch.mean == pytest.approx(sum(per_epoch) / 3)
    low = stats.ttest_1samp(per_epoch, -delta, alternative="greater").pvalue
    high = stats.ttest_1samp(per_epoch, delta, alternative="less").pvalue
    assert epoch.p == pytest.approx(max(low, high))


def test_holm_runs_over_each_tasks_comparisons_and_missing_arms_read_no_records(tmp_path: Path):
    for seed in range(3):
        write(tmp_path, "s2_wn_full_ft", seed, [1] * 8 + [0] * 12)
        write(tmp_path, "s2_wn_mezo", seed, [0] * 20)
        write(tmp_path, "s2_wn_hizfo", seed, [1] * 7 + [0] * 13)
    found = list(outcomes_of(tmp_path).values())
    wordnet = [o for o in found if o.spec.task == "wordnet_revdict" and o.p is not None]
    adjusted = holm([o.p for o in wordnet])
    for o, p in zip(wordnet, adjusted):
        if o.spec.kind == "difference":
            assert o.holm == (INCONCLUSIVE if p >= 0.05 or not o.mean else SUPPORTED if o.mean > 0 else CONTRADICTED)
    assert all(o.verdict == NO_RECORDS for o in found if o.spec.task == "pydoc")
    assert any("no records for s2_wn_hizfo_adamw" in o.note for o in found)


def test_a_claim_row_combines_its_comparisons():
    assert combine([SUPPORTED, SUPPORTED]) == SUPPORTED
    assert combine([SUPPORTED, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine([SUPPORTED, CONTRADICTED]) == CONTRADICTED
    assert combine([NO_RECORDS, NO_RECORDS]) == NO_RECORDS and combine([NO_RECORDS, SUPPORTED]) == INCONCLUSIVE
    assert claim_rows([]) == []
    assert shown(SUPPORTED, "per epoch").startswith("equivalent within ±10%") and shown(SUPPORTED, "as run") == SUPPORTED


def test_the_driver_writes_the_preregistered_claims_for_study2_records(tmp_path: Path):
    runs, out = tmp_path / "runs", tmp_path / "report"
    for seed in range(3):
        write(runs, "s2_wn_full_ft", seed, [1] * 6 + [0] * 14, seconds=500.0 + seed)
        write(runs, "s2_wn_mezo", seed, [1] * 2 + [0] * 18, seconds=200.0)
    assert main(["--results", str(runs), "--out", str(out)]) == 0
    text = (out / "claims.md").read_text()
    assert "pre-registered tests" in text and "example sign-flip = exact McNemar" in text
    assert "| (1) pure ZO (MeZO) is poor: Full FT beats MeZO | WordNet" in text or "(1) pure ZO" in text
    study = json.loads((out / "study.json").read_text())
    first = next(c for c in study["claims"]["comparisons"] if c["claim"] == "1")
    assert first["p"] == pytest.approx(binomial_two_sided(12, 12)) and first["verdict"] == SUPPORTED


# -- the committed study: its report follows from its committed records -------------------------------------------
STUDY2 = Path("results/smollm2_cpu_study2")


@pytest.mark.slow
def test_the_committed_study2_report_is_what_its_records_give(tmp_path: Path):
    """Records are committed with the report they give (interim while seeds are missing): regenerated here, report.md
    and claims.md equal the committed files; records without a committed report fail."""
    from analysis.study.driver import run_study
    from conftest import ROOT
    records = sorted((ROOT / STUDY2 / "runs").rglob("seed*.json"))
    committed = ROOT / STUDY2 / "report"
    if not records:
        assert not (committed / "claims.md").exists(), "a study-2 report without records"
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)                                  # the committed command's relative paths
        assert run_study(STUDY2 / "runs", tmp_path, report=Report(quiet=True))
    for name in ("report.md", "claims.md"):
        assert (committed / name).is_file(), f"{len(records)} study-2 records but no committed {name}"
        assert (tmp_path / name).read_text() == (committed / name).read_text(), \
            f"regenerate: python -m analysis.study --results {STUDY2}/runs --out {STUDY2}/report"


def test_the_plan_section_sets_each_arms_runs_against_its_planned_minutes(tmp_path: Path):
    from analysis.study.study2_plan import PLANNED_MINUTES, plan_section
    for seed in range(2):
        write(tmp_path, "s2_wn_full_ft", seed, [1] * 5 + [0] * 15)
    frame, _ = load_study(tmp_path, Report())
    frame["run_seconds"] = [600.0, 420.0]
    text = "\n".join(plan_section(frame))
    plan = PLANNED_MINUTES["s2_wn_full_ft"]
    assert f"| s2_wn_full_ft | 8 | {plan:.1f} | 2 | 8.5 | {8.5 / plan:.2f} |" in text
    assert set(PLANNED_MINUTES) == set(ARM) and "| s2_wn_mezo | 5 |" in text
    total = sum(PLANNED_MINUTES[a.name] * a.seeds for a in ARMS) / 60
    assert f"Planned: {total:.1f} worker-hours" in text and "took 0.3 worker-hours" in text


# what a run computes with: a study-2 record's commit must hold the pinned commit's files here
CODE_PATHS = ("hizfo", "baselines", "run.py", "conf", "data", "scripts/run_study.py", "requirements.lock",
              "pyproject.toml")


@pytest.mark.subprocess
def test_every_study2_record_ran_the_pinned_code():
    """The study takes several sessions while main moves on: each record's commit has the pinned commit's code
    (``CODE_PATHS``) and a clean tree, so every run computed with the same code."""
    import subprocess
    from analysis.study.study2_plan import CODE_COMMIT
    from conftest import ROOT
    records = [json.loads(p.read_text()) for p in sorted((ROOT / STUDY2 / "runs").rglob("seed*.json"))]
    shas = {r["provenance"].get("git_sha") for r in records}
    assert not [r for r in records if r["provenance"].get("git_dirty") is not False], "a record from a dirty tree"
    for sha in sorted(s or "" for s in shas):
        same = subprocess.run(["git", "diff", "--quiet", CODE_COMMIT, sha, "--", *CODE_PATHS], cwd=ROOT,
                              capture_output=True, timeout=60)
        assert same.returncode == 0, f"records made at {sha[:12]} ran other code than {CODE_COMMIT[:12]}"


def test_the_rerun_section_sets_study1s_arms_beside_study1s_records(tmp_path: Path, monkeypatch):
    from analysis.study import study2_plan
    here, there = tmp_path / "s2", tmp_path / "s1"
    for seed, twin_sha in ((0, "abc"), (1, "other")):
        write(here, "s2_wn_full_ft", seed, [1] * 5 + [0] * 15)        # a stand-in: mark the arm as study 1's
        path = here / "smollm2-135m" / "wordnet_revdict" / "full_ft" / "default" / f"seed{seed}.json"
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "final_params_sha256": "abc"}))
        twin = there / path.relative_to(here)
        twin.parent.mkdir(parents=True, exist_ok=True)
        twin.write_text(json.dumps({**record, "final_params_sha256": twin_sha}))
    monkeypatch.setattr(study2_plan, "STUDY1_RUNS", there)
    monkeypatch.setattr(study2_plan, "ARMS", tuple(replace_reused(a) for a in ARMS))
    frame, _ = load_study(here, Report())
    lines = study2_plan.rerun_section(frame, here)
    assert "- s2_wn_full_ft: 2 seeds rerun; 1 with study 1's final weights bit for bit, 2 with its scores exactly." \
        in lines


def replace_reused(arm):
    from dataclasses import replace
    return replace(arm, reused=arm.name == "s2_wn_full_ft")


def test_every_committed_run_of_a_task_scored_the_same_examples_in_the_same_order():
    """The example-level tests pair two runs' per-example scores by position (analysis/study/prereg.py checks only
    that the counts agree): sound only while every study-2 run of a task wrote the same examples in one order."""
    from conftest import ROOT
    orders: dict[str, dict[str, list]] = {}
    for path in sorted((ROOT / STUDY2 / "runs").rglob("seed*.predictions.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        task = path.relative_to(ROOT / STUDY2 / "runs").parts[1]
        orders.setdefault(task, {})[str(path)] = [(r["index"], r.get("prompt"), r.get("references")) for r in rows]
    for task, runs in orders.items():
        first = next(iter(runs.values()))
        differing = [p for p, order in runs.items() if order != first]
        assert not differing, f"{task}: these runs scored other examples or another order: {differing}"
