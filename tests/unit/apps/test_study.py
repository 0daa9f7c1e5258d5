"""analysis.study on hand-written records with known values: intervals, paired differences, verdicts, plots."""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest
from scipy import stats

from analysis.loading import Report
from analysis.study.arms import arms_of, find_arm, load_study, paired, sweep_arms
from analysis.study.claims import NO_RECORDS, study_claims
from analysis.study.driver import main
from analysis.study.report import common_seeds, seed_list, sweep_points
from analysis.study.stats import (CONTRADICTED, INCONCLUSIVE, SUPPORTED, Interval, holm, min_detectable, t_interval,
                                  tost, verdict)

HIZFO_CFG = {"rho": 0.6, "alpha": 0.1, "lr_ratio": 0.1, "alpha_mode": "update", "lr": 2e-5}
SWEEP_KEY = {"method.rho": "rho", "method.alpha": "alpha", "method.lr_ratio": "lr_ratio"}


def write(root: Path, method: str, variant: str, seeds_scores: dict[int, float], *, task: str = "pydoc",
          seconds: dict[int, float] | None = None, memory: dict[int, float] | None = None, curve: bool = True,
          status: str = "ok", metric: str | None = None, fo_tensors: int | None = None,
          planned: int | None = None) -> None:
    """One record per seed, in run.py's layout, with the method config the variant implies."""
    name = "hizfo" if method.startswith("hizfo") else method
    method_cfg = {"name": method, **(HIZFO_CFG if name == "hizfo" else {"lr": 2e-5}),
                  "epochs": 3 if name == "hizfo" else 5, "max_steps": None}          # the paper's protocol
    for pair in [p for p in variant.split(",") if variant != "default"]:
        key, value = pair.split("=")
        if key in SWEEP_KEY:
            method_cfg[SWEEP_KEY[key]] = float(value)
        elif key == "method.alpha_mode":
            method_cfg["alpha_mode"] = value
    metric = metric or ("rouge1" if task == "pydoc" else "pass@1")
    for seed, score in seeds_scores.items():
        metrics = {metric: score} if metric != "rouge1" else {"rouge1": score, "rouge2": score / 2,
                                                              "rougeL": score - 1}
        record = {
            "status": status, "error": None if status == "ok" else "boom",
            "config": {"model": {"name": "smollm2-135m"}, "task": {"name": task}, "method": method_cfg,
                       "seed": seed, "variant": variant, **({"study_seeds": planned} if planned else {})},
            "metrics": metrics if status == "ok" else {},
            "costs": {"train_seconds": (seconds or {}).get(seed, 100.0), "memory_kind": "cuda_max_allocated",
                      "peak_memory_gb": (memory or {}).get(seed, 5.0)},
            "provenance": {"created": f"2025-01-01T00:00:{seed:02d}+00:00"},
        }
        if fo_tensors is not None:
            record["partition"] = {"fo_tensors": fo_tensors, "zo_tensors": 10 - fo_tensors, "frozen_tensors": 0}
        if curve:
            record["curve"] = {"every": 1, "train_loss": [[s, 3.0 - 0.1 * s - 0.01 * seed] for s in range(1, 6)],
                               "eval": [{"epoch": 0, "step": 5, "eval_loss": 2.6 - 0.01 * seed,
                                         "metrics": {metric: score}}]}
        path = root / "smollm2-135m" / task / method / variant / f"seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))


def seeds(*values: float) -> dict[int, float]:
    return dict(enumerate(values))


@pytest.fixture
def results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    write(root, "full_ft", "default", seeds(30, 31, 32), seconds=seeds(100, 110, 120), memory=seeds(10, 10.5, 10.2))
    write(root, "full_ft", "default", {5: 99.0}, status="failed")                  # left out
    write(root, "hizfo", "default", seeds(33, 35, 34), seconds=seeds(50, 55, 60), memory=seeds(6, 6.1, 6.3))
    write(root, "mezo", "default", seeds(20, 25, 31), curve=False)
    write(root, "hizfo_zo_off", "default", seeds(34, 34, 36))
    write(root, "hizfo_random_dir", "default", seeds(36, 37, 37))
    write(root, "hizfo", "method.alpha=0", seeds(30, 31, 30))
    write(root, "hizfo", "method.alpha_mode=loss", {0: 33.0})                         # one seed
    write(root, "hizfo", "method.alpha=0,method.alpha_mode=loss", {0: 31.0})
    write(root, "hizfo", "method.rho=0.2", seeds(30, 30, 31))
    write(root, "hizfo", "method.rho=0.4", seeds(35, 36, 37))
    write(root, "hizfo", "method.rho=0.8", seeds(29, 30, 30))
    write(root, "hizfo", "method.lr_ratio=0.3", seeds(33.1, 35.0, 33.9))
    write(root, "hizfo", "method.lr_ratio=0.7", seeds(20, 21, 22))
    write(root, "hizfo", "default", {0: 0.1}, task="humaneval_split")                  # one seed, one arm
    return root


def claims_of(root: Path, margin: float = 0.05) -> list[dict]:
    frame, _ = load_study(root, Report(quiet=True))
    return [asdict(c) for c in study_claims(arms_of(frame), frame, margin)]


def claim(claims: list[dict], number: str, task: str = "pydoc", contains: str = "") -> dict:
    found = [c for c in claims if c["number"] == number and c["task"] == task and contains in c["text"]]
    assert len(found) == 1, [c["text"] for c in found]
    return found[0]


def hand_interval(values: list[float]) -> tuple[float, float, float]:
    n = len(values)
    mean = sum(values) / n
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = 4.302652729911275 * s / math.sqrt(n) if n == 3 else stats.t.ppf(0.975, n - 1) * s / math.sqrt(n)
    return mean, mean - half, mean + half


def test_t_interval_matches_scipy_and_the_hand_formula():
    values = [33.0, 35.0, 34.0, 30.5]
    iv = t_interval(values)
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=sum(values) / 4, scale=stats.sem(values))
    assert (iv.lo, iv.hi) == (pytest.approx(lo), pytest.approx(hi))
    mean, lo3, hi3 = hand_interval([3.0, 4.0, 2.0])
    three = t_interval([3.0, 4.0, 2.0])
    assert (three.mean, three.lo, three.hi) == (pytest.approx(mean), pytest.approx(lo3), pytest.approx(hi3))
    one = t_interval([7.0])
    assert one.n == 1 and one.mean == 7.0 and one.lo is None and one.show() == "7.00 ± –"
    assert t_interval([]).show() == "–"


def test_arms_hold_the_right_seeds_means_and_intervals(results):
    frame, _ = load_study(results, Report(quiet=True))
    arms = arms_of(frame)
    full = find_arm(arms, "smollm2-135m", "pydoc", "full_ft")
    assert full.seeds == [0, 1, 2]                                     # the failed seed-5 record is left out
    iv = full.interval("metric.rouge1")
    assert (iv.mean, iv.lo, iv.hi) == (pytest.approx(31.0), *map(pytest.approx, hand_interval([30, 31, 32])[1:]))
    assert full.interval("train_seconds").mean == pytest.approx(110.0)
    # α's loss reading is its own method; its alpha_mode override is not part of the variant
    loss = find_arm(arms, "smollm2-135m", "pydoc", "hizfo_alpha_loss")
    assert loss is not None and loss.seeds == [0]
    assert find_arm(arms, "smollm2-135m", "pydoc", "hizfo_alpha_loss", "method.alpha=0").seeds == [0]
    diff, pairs = paired(find_arm(arms, "smollm2-135m", "pydoc", "hizfo"), full, "metric.rouge1")
    assert pairs == [0, 1, 2]
    assert (diff.mean, diff.lo, diff.hi) == tuple(map(pytest.approx, hand_interval([3.0, 4.0, 2.0])))


def test_claims_get_the_verdicts_their_numbers_give(results):
    summary = claims_of(results)
    assert claim(summary, "1")["verdict"] == INCONCLUSIVE                # Full FT − MeZO = 10, 6, 1: CI spans 0
    c2 = claim(summary, "2")
    assert c2["verdict"] == SUPPORTED                                     # 3, 4, 2
    assert c2["comparisons"][0]["interval"]["mean"] == pytest.approx(3.0)
    assert c2["comparisons"][0]["interval"]["lo"] == pytest.approx(hand_interval([3, 4, 2])[1])
    assert claim(summary, "3")["verdict"] == INCONCLUSIVE                 # −1, 1, −2
    assert claim(summary, "4")["verdict"] == CONTRADICTED                 # −3, −2, −3
    loss = claim(summary, "5")                                            # the loss reading only, one seed each
    assert "alpha_mode=loss" in loss["text"] and "claim 3" in loss["note"]
    assert loss["verdict"] == loss["holm_verdict"] == INCONCLUSIVE
    assert loss["comparisons"][0]["interval"]["lo"] is None and loss["comparisons"][0]["p"] is None
    assert claim(summary, "6")["verdict"] == SUPPORTED                    # ρ=0.4 above ρ=0.2 and ρ=0.8
    c7 = claim(summary, "7")
    assert c7["verdict"] == SUPPORTED, c7                                 # 0.3 within ±5 % of r=0.1, 0.7 collapses
    assert claim(summary, "8")["verdict"] == SUPPORTED                    # faster and lighter, every seed
    for number in ("1", "2", "3", "4", "6", "7", "8"):                    # the other task has only Hi-ZFO
        assert claim(summary, number, task="humaneval_split")["verdict"] == NO_RECORDS


def test_stability_needs_the_equivalence_margin_not_just_a_ci_through_zero(results):
    # a tight margin: r=0.3 − r=0.1 = 0.1, 0, −0.1 has a CI through 0 but not inside ±0.001 × 34
    summary = claims_of(results, margin=0.001)
    c7 = claim(summary, "7")
    assert c7["verdict"] == INCONCLUSIVE and "stability: inconclusive" in c7["note"]


@pytest.mark.slow
def test_the_report_shows_a_one_seed_arm_with_a_dash_and_the_right_table(results, tmp_path):
    out = tmp_path / "report"
    assert main(["--results", str(results), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| Hi-ZFO (α in loss) | default |"))
    assert "| 1 | 33.00 ± – |" in row
    assert "one seed, so no interval" in report
    full = next(line for line in report.splitlines() if line.startswith("| Full FT | default |"))
    half = hand_interval([30, 31, 32])[2] - 31
    assert f"| 3 | 31.00 ± {half:.2f} |" in full and "110.0 ±" in full and "cuda_max_allocated" in full
    assert "| Hi-ZFO − Full FT | 3 | +3.00 [" in report
    assert "| Hi-ZFO | default | 1 | 0.100 ± – |" in report                 # humaneval_split: pass@1, 3 places
    for stem in ("curves_pydoc_smollm2-135m", "scores_pydoc_smollm2-135m", "sweeps_pydoc_smollm2-135m"):
        for suffix in (".png", ".pdf"):
            assert (out / f"{stem}{suffix}").stat().st_size > 1000
    assert "without a curve" in report                                   # MeZO's records have none
    claims = (out / "claims.md").read_text()
    assert "**contradicted**" in claims and "**supported**" in claims and "inconclusive (no records)" in claims
    assert "equivalence" in claims
    assert json.loads((out / "study.json").read_text())["arms"]


def test_an_explicit_default_value_and_shared_overrides_name_the_default_arm(tmp_path):
    root = tmp_path / "results"
    write(root, "hizfo", "task.train_limit=500", seeds(1.0, 2.0))
    write(root, "hizfo", "method.alpha=0.1,task.train_limit=500", {2: 3.0})
    write(root, "hizfo", "method.rho=0.2,task.train_limit=500", seeds(1.0, 2.0))
    frame, shared = load_study(root, Report(quiet=True))
    arms = arms_of(frame)
    assert shared[("smollm2-135m", "pydoc")] == ["task.train_limit=500"]
    assert find_arm(arms, "smollm2-135m", "pydoc", "hizfo").seeds == [0, 1, 2]
    assert {a.variant for a in arms} == {"default", "method.rho=0.2"}


def test_no_records_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["--results", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 1
    assert "no ok record" in capsys.readouterr().err


# -- p values, Holm, TOST, detectable differences: checked against closed forms ---------------------------------
def p_two_sided_df2(diffs: list[float]) -> float:
    """Three seeds: Student's t with 2 degrees of freedom has the CDF 1/2 + t / (2 √(2 + t²)), so p = 1 − t/√(2+t²)."""
    mean, lo, hi = hand_interval(diffs)
    s = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    t = abs(mean) / (s / math.sqrt(3))
    return 1 - t / math.sqrt(2 + t * t)


def test_holm_adjusts_step_down_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and holm([]) == []


def test_tost_is_the_90_percent_interval_inside_the_margin():
    diffs = [0.1, 0.0, -0.1]                          # mean 0, s 0.1: t = 1.7 / (0.1/√3) = 29.44 against ±1.7
    t = 1.7 / (0.1 / math.sqrt(3))
    p_eq, p_ne = tost(diffs, 1.7)
    assert p_eq == pytest.approx(0.5 - t / (2 * math.sqrt(2 + t * t)))            # the df=2 closed form
    assert p_ne == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)))
    iv = t_interval(diffs, 0.90)
    for delta in (0.10, 0.15, 0.17, 0.20, 1.7):       # p < 0.05 exactly when the 90 % CI is inside ±δ
        assert (tost(diffs, delta)[0] < 0.05) == (-delta < iv.lo and iv.hi < delta), delta
    assert tost([5.0, 5.1, 4.9], 1.0)[1] < 0.05 and tost([1.0], 1.0) == (None, None)   # far outside; one seed


def test_the_detectable_difference_has_the_stated_power():
    import numpy as np
    rng = np.random.default_rng(0)
    for n in (3, 8):
        effect = min_detectable(n, 1.0)
        draws = rng.normal(effect, 1.0, size=(40000, n))
        t = draws.mean(axis=1) / (draws.std(axis=1, ddof=1) / math.sqrt(n))
        assert np.mean(np.abs(t) > stats.t.ppf(0.975, n - 1)) == pytest.approx(0.80, abs=0.01), n
    assert min_detectable(8, 2.0) == pytest.approx(2 * min_detectable(8, 1.0))
    assert min_detectable(1, 1.0) is None


def test_fixture_p_values_holm_family_and_verdicts_by_hand(results):
    summary = claims_of(results)
    pydoc = [c for c in summary if c["task"] == "pydoc"]
    # the family: claims 1-4 (one each), 6 (ρ 0.4 and 0.6 against both ends), 7 (collapse, TOST), 8 (time, memory);
    # claim 5 has one seed per arm, claim 8's time per epoch is context
    assert {c["family_size"] for c in pydoc} == {12}
    c2 = claim(summary, "2")["comparisons"][0]
    assert c2["p"] == pytest.approx(p_two_sided_df2([3, 4, 2]))                  # 0.0351
    # Holm by hand: the 12 p values in order are TOST 0.00058, memory 0.00139, collapse 0.00197, time 0.00274,
    # ρ0.4−ρ0.8 0.00276, ρ0.4−ρ0.2 0.00344, ρ0.6−ρ0.8 0.00587, claim 4 0.0153, ρ0.6−ρ0.2 0.0315, claim 2 0.0351,
    # claim 1 0.161, claim 3 0.529; claim 2 is 10th: max(0.0315 × 4, 0.0351 × 3) = 0.126
    assert c2["p_holm"] == pytest.approx(4 * p_two_sided_df2([3, 5, 3]))
    assert claim(summary, "2")["verdict"] == SUPPORTED and claim(summary, "2")["holm_verdict"] == INCONCLUSIVE
    c4 = claim(summary, "4")                                                       # −3, −2, −3: 8th, × 5
    assert c4["comparisons"][0]["p_holm"] == pytest.approx(5 * p_two_sided_df2([-3, -2, -3]))
    assert (c4["verdict"], c4["holm_verdict"]) == (CONTRADICTED, INCONCLUSIVE)
    c7 = claim(summary, "7")
    equivalence = next(c for c in c7["comparisons"] if c["kind"] == "equivalence")
    assert equivalence["margin"] == pytest.approx(0.05 * 34.0)                    # δ = 5 % of the r = 0.1 mean
    t = 1.7 / (0.1 / math.sqrt(3))
    assert equivalence["p"] == pytest.approx(0.5 - t / (2 * math.sqrt(2 + t * t)))
    assert equivalence["p_holm"] == pytest.approx(12 * equivalence["p"])           # the smallest of 12
    assert (c7["verdict"], c7["holm_verdict"]) == (SUPPORTED, SUPPORTED)
    assert c2["min_detectable"] == pytest.approx(min_detectable(3, 1.0))           # s.d. of 3, 4, 2 is 1
    for c in (c for claim_ in pydoc for c in claim_["comparisons"] if c["kind"] == "difference"):
        assert c["verdict"] == verdict(Interval(**c["interval"])), c              # p < 0.05 ⇔ the 95 % CI excludes 0


def test_claim_6_is_an_intersection_union_test_by_hand(results):
    c6 = claim(claims_of(results), "6")
    by = {c["what"]: c for c in c6["comparisons"]}
    assert set(by) == {"ρ=0.4 − ρ=0.2", "ρ=0.4 − ρ=0.8", "ρ=0.6 − ρ=0.2", "ρ=0.6 − ρ=0.8"}   # 0.6: the default
    assert by["ρ=0.4 − ρ=0.2"]["p"] == pytest.approx(p_two_sided_df2([5, 6, 6]))             # 0.0034
    assert by["ρ=0.4 − ρ=0.8"]["p"] == pytest.approx(p_two_sided_df2([6, 6, 7]))             # 0.0028
    # ρ = 0.4 beats both ends, raw and after Holm (5th and 6th of 12: 0.0028 × 8, 0.0034 × 7, monotone 0.0247)
    assert by["ρ=0.4 − ρ=0.2"]["p_holm"] == pytest.approx(9 * p_two_sided_df2([50, 55, 60]))
    assert (c6["verdict"], c6["holm_verdict"]) == (SUPPORTED, SUPPORTED)


def test_a_valley_over_rho_contradicts_and_one_seed_is_inconclusive(tmp_path):
    root = tmp_path / "results"
    write(root, "hizfo", "default", seeds(30, 31, 30))                             # ρ = 0.6
    write(root, "hizfo", "method.rho=0.2", seeds(36, 37, 37))
    write(root, "hizfo", "method.rho=0.8", seeds(35, 36, 36))
    c6 = claim(claims_of(root), "6")
    assert c6["verdict"] == CONTRADICTED                                           # both ends beat ρ = 0.6
    write(root, "hizfo", "method.rho=0.4", {0: 40.0})                              # one seed: no test
    c6 = claim(claims_of(root), "6")
    assert all(c["p"] is None for c in c6["comparisons"] if c["what"].startswith("ρ=0.4"))


def test_claim_8_shows_the_protocol_and_time_per_epoch(results):
    c8 = claim(claims_of(results), "8")
    per_epoch = next(c for c in c8["comparisons"] if "per epoch" in c["what"])
    # Full FT 100, 110, 120 s over 5 epochs; Hi-ZFO 50, 55, 60 s over 3: 20 − 16.67, 22 − 18.33, 24 − 20
    assert per_epoch["interval"]["mean"] == pytest.approx((10 / 3 + 11 / 3 + 4) / 3)
    assert per_epoch["decides"] is False and per_epoch["p_holm"] is None
    assert "2.00 as run, 1.20 per epoch" in c8["note"]


@pytest.mark.slow
def test_the_report_names_hizfo_arms_whose_budget_selected_no_tensor(tmp_path):
    """At a small rho the DP can find nothing it can afford: the arm is pure ZO, and the report says so. MeZO (pure
    ZO by design) and an arm with one first-order seed are not named."""
    root = tmp_path / "results"
    write(root, "hizfo", "default", seeds(33, 35, 34), fo_tensors=4)
    write(root, "hizfo", "method.rho=0.2", seeds(20, 21, 20), fo_tensors=0)
    write(root, "hizfo", "method.rho=0.4", {0: 20.0}, fo_tensors=0)
    write(root, "hizfo", "method.rho=0.4", {1: 25.0}, fo_tensors=2)
    write(root, "mezo", "default", seeds(20, 25, 31), fo_tensors=0)
    out = tmp_path / "report"
    assert main(["--results", str(root), "--out", str(out)]) == 0
    note = next(line for line in (out / "report.md").read_text().splitlines() if "no tensor in the first-order" in line)
    assert note.split(": the budget")[0] == "Note: Hi-ZFO [method.rho=0.2]"


@pytest.mark.slow
def test_a_study_short_of_its_planned_seeds_says_interim_and_a_finished_one_does_not(tmp_path):
    """Records carry their arm's study_seeds: while an arm has fewer, both files open with an interim banner and the
    arm's n reads "2 of 3"; once every arm has its seeds the banner goes."""
    root = tmp_path / "results"
    write(root, "full_ft", "default", seeds(30, 31, 32), planned=3)
    write(root, "hizfo", "default", seeds(33, 35), planned=3)
    out = tmp_path / "report"
    assert main(["--results", str(root), "--out", str(out)]) == 0
    report, claims = (out / "report.md").read_text(), (out / "claims.md").read_text()
    for text in (report, claims):
        banner = next(line for line in text.splitlines() if line.startswith("**Interim.**"))
        assert "1 of the 2 arms" in banner and "5 runs are here and at least 1 more" in banner
        assert banner.endswith("Arms still short: Hi-ZFO (PyDoc (stdlib)) 2 of 3.")
    assert "| Hi-ZFO | default | 2 of 3 |" in report and "| Full FT | default | 3 |" in report
    summary = json.loads((out / "study.json").read_text())
    assert summary["interim"] is True and {a["method"]: a["planned_seeds"] for a in summary["arms"]} == {
        "full_ft": 3, "hizfo": 3}
    write(root, "hizfo", "default", {2: 34.0}, planned=3)
    assert main(["--results", str(root), "--out", str(out)]) == 0
    assert "Interim" not in (out / "report.md").read_text() + (out / "claims.md").read_text()
    assert json.loads((out / "study.json").read_text())["interim"] is False


def test_identical_paired_differences_get_the_exact_sign_flip_p_and_no_invented_interval(tmp_path):
    from analysis.study.stats import sign_flip_p, t_test_p
    # by hand: n equal differences c ≠ 0 reach |mean| ≥ |c| only with all signs kept or all flipped: 2 / 2^n
    assert t_test_p([0.062, 0.062]) == 0.5 and t_test_p([5.0, 5.0, 5.0]) == 0.25
    assert t_test_p([1.0] * 8) == pytest.approx(2 / 256) and t_test_p([0.0, 0.0, 0.0]) == 1.0
    assert t_test_p([2.0] * 3, 0.0, "greater") == 0.125 and t_test_p([2.0] * 3, 0.0, "less") == 1.0
    # where s > 0 the sign-flip test is a real permutation test: 1, 2, 3 -> only all-positive (mean 2) and the
    # all-negative mirror reach |mean| ≥ 2 among 8 assignments; every signing of (1, −2) has |mean| ≥ 0.5
    assert sign_flip_p([1.0, 2.0, 3.0]) == 0.25 and sign_flip_p([1.0, -2.0]) == 1.0
    assert min_detectable(3, 0.0) is None
    root = tmp_path / "results"
    for method, scores in {"full_ft": (6 / 81, 6 / 81, 6 / 81), "mezo": (1 / 81, 1 / 81, 1 / 81),
                           "hizfo": (0.0, 0.0, 0.0), "hizfo_zo_off": (0.0, 0.0, 0.0)}.items():
        write(root, method, "default", seeds(*scores), task="humaneval_split")
    summary = claims_of(root)
    c1 = claim(summary, "1", task="humaneval_split")
    assert c1["comparisons"][0]["interval"]["lo"] is None and c1["comparisons"][0]["p"] == 0.25
    assert c1["verdict"] == INCONCLUSIVE and "sign-flip" in c1["note"]           # 3 of 3 seeds is not p < 0.05
    c3 = claim(summary, "3", task="humaneval_split")
    assert c3["comparisons"][0]["p"] == 1.0 and c3["verdict"] == INCONCLUSIVE
    assert c1["comparisons"][0]["min_detectable"] is None
    arms = arms_of(load_study(root, Report(quiet=True))[0])
    full_ft, mezo = (find_arm(arms, "smollm2-135m", "humaneval_split", m) for m in ("full_ft", "mezo"))
    assert paired(full_ft, mezo, "metric.pass@1")[0].show_ci(3) == "+0.062 –"  # report.md's table: no interval


@pytest.mark.slow
def test_the_budget_section_counts_sittings_run_time_and_scale_by_hand(tmp_path):
    """Three runs: two overlapping (two workers), one after a 2-hour gap; wall-clock skips the gap."""
    starts = {0: "2026-01-01T10:00:00+00:00", 1: "2026-01-01T10:01:00+00:00", 2: "2026-01-01T12:30:00+00:00"}
    minutes = {0: 10.0, 1: 14.0, 2: 8.0}                          # setup 0 + train + eval (eval is 1 min)
    for seed in starts:
        write(tmp_path, "full_ft", "default", {seed: 30.0})
        path = tmp_path / "smollm2-135m" / "pydoc" / "full_ft" / "default" / f"seed{seed}.json"
        record = json.loads(path.read_text())
        record["costs"].update(train_seconds=(minutes[seed] - 1) * 60, eval_seconds=60.0, setup_seconds=0.0,
                               steps=10)
        record["config"]["task"]["batch_size"] = 4
        record["provenance"].update(created=starts[seed], device="cpu", device_name="x86_64", cpu_count=2,
                                    num_threads=1, hostname="box")
        path.write_text(json.dumps(record))
        path.with_suffix(".predictions.jsonl").write_text("{}\n" * 7)
    out = tmp_path / "report"
    assert main(["--results", str(tmp_path), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    # sittings: [10:00, 10:15] (10:01 + 14 min) and [12:30, 12:38]: 15 + 8 = 23 min = 0.38 h; run time 32 min
    assert "3 runs, 0.5 h of run time" in report and "0.4 h of wall-clock over 2 sittings" in report
    assert "median 10.0 min, shortest 8.0, longest 14.0" in report
    assert "device cpu (x86_64), 2 CPUs, 1 torch thread(s) a run, host box" in report
    # the curve's first epoch ends at step 5: 5 steps an epoch at batch 4; 7 predictions a run
    assert "pydoc on smollm2-135m: batch 4, 5 steps an epoch (at most 20 training examples); Full FT 5 epochs = " \
           "10 steps; 7 evaluation examples a run." in report
    assert "The paper's scale: OPT-350M to OPT-13B" in report


@pytest.mark.slow
def test_a_sweep_plots_its_points_over_the_seeds_they_share(tmp_path):
    """The default arm has 5 seeds and the sweep arms 3: every point is over seeds 0-2, the default's extra seeds
    (much lower here) are left out of its point, and a one-seed point keeps its one value."""
    write(tmp_path, "hizfo", "default", seeds(34, 35, 36, 10, 10))
    write(tmp_path, "hizfo", "method.lr_ratio=0.3", seeds(33, 35, 34))
    write(tmp_path, "hizfo", "method.lr_ratio=0.7", {0: 20.0})
    frame, _ = load_study(tmp_path)
    sweep = sweep_arms(arms_of(frame), "smollm2-135m", "pydoc", "hizfo", "lr_ratio")
    shared, points, single = sweep_points(sweep, "metric.rouge1")
    assert shared == {0, 1, 2} and single == [0.7]
    assert points[0.1].mean == pytest.approx(35.0) and points[0.1].n == 3        # not 25.0 over all 5 seeds
    assert points[0.3].mean == pytest.approx(34.0) and points[0.7].mean == pytest.approx(20.0)
    assert common_seeds([{0}, {3}]) == {0, 3} and common_seeds([{0, 1}, {2, 3}, {4}]) == {0, 1, 2, 3, 4}
    assert seed_list({0, 1, 2}) == "0–2" and seed_list({0, 4}) == "0, 4"
    assert main(["--results", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "sweeps_pydoc_smollm2-135m.png").stat().st_size > 1000
    pdf = (tmp_path / "out" / "sweeps_pydoc_smollm2-135m.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and b"/CreationDate" not in pdf     # same records, same bytes
