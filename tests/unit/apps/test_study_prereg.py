"""The second CPU study's pre-registered analysis rules (analysis/study/prereg.py) against hand-computed values, and
the check that its rules' commit precedes every study-2 record."""
from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from analysis.study.study2_spec import ARMS, COMPARISONS
from analysis.study.prereg import (PER_EPOCH_MARGIN, STABILITY_MARGIN, binomial_two_sided, cost_test,
                                   example_equivalence,
                                   example_scores, example_test, holm_verdicts, preregistration_violations,
                                   seed_equivalence, seed_level, sign_flip_examples)
from analysis.study.stats import CONTRADICTED, INCONCLUSIVE, SUPPORTED
from conftest import ROOT

STUDY2_RUNS = ROOT / "results" / "smollm2_cpu_study2" / "runs"
RULES = ("analysis/study/prereg.py", "analysis/study/study2_spec.py")     # the rules and the arms and comparisons


def passes(n_pass: int, n: int = 81) -> list[float]:
    """0/1 scores of ``n`` problems, the first ``n_pass`` passed."""
    return [1.0] * n_pass + [0.0] * (n - n_pass)


def test_the_margins_are_the_ones_stated_in_the_preset():
    assert STABILITY_MARGIN == 0.05 and PER_EPOCH_MARGIN == 0.10
    header = (ROOT / "conf" / "experiment" / "smollm2_study2_cpu.yaml").read_text()
    assert "δ = 10 % of Full FT's s/epoch" in header


def test_all_equal_differences_are_decided_by_the_examples_not_a_switch():
    """(5, 5, 5)/81 against 0/81: 15 discordant problems, all one way. Seed level the t test is undefined and the
    sign-flip p is 0.25 (reported only); the deciding exact McNemar p is 2 / 2^15, and (5, 5, 6) gives 2 / 2^16:
    more consistent evidence never gets a weaker verdict."""
    equal = example_test({s: passes(5) for s in range(3)}, {s: passes(0) for s in range(3)})
    assert equal.exact and (equal.favour, equal.against) == (15, 0)
    assert equal.p == pytest.approx(2 / 2 ** 15) and equal.verdict == SUPPORTED
    assert equal.mean == pytest.approx(5 / 81)
    uneven = example_test({0: passes(5), 1: passes(5), 2: passes(6)}, {s: passes(0) for s in range(3)})
    assert uneven.p == pytest.approx(2 / 2 ** 16) and uneven.verdict == SUPPORTED
    seeds_equal = seed_level([5 / 81] * 3)
    assert seeds_equal.t_p is None and seeds_equal.sign_flip_p == pytest.approx(0.25)
    t = (16 / 3 / 81) / (np.std([5, 5, 6], ddof=1) / 81 / math.sqrt(3))    # hand t statistic, 2 df
    assert seed_level([5 / 81, 5 / 81, 6 / 81]).t_p == pytest.approx(2 * (1 - 0.5 * (1 + t / math.sqrt(t * t + 2))))


def test_the_issues_mcnemar_case_combines_across_seeds():
    """Hi-ZFO 0/81 against Full FT 6/81 on every seed, all 6 discordant problems for Full FT: exact McNemar
    2 / 2^6 = 0.031 per seed (the issue's figure), 2 / 2^18 over the three seeds; against the paper: contradicted."""
    one = example_test({0: passes(0)}, {0: passes(6)})
    assert one.p == pytest.approx(0.03125) and one.verdict == CONTRADICTED
    three = example_test({s: passes(0) for s in range(3)}, {s: passes(6) for s in range(3)})
    assert three.p == pytest.approx(2 / 2 ** 18) and (three.favour, three.against) == (0, 18)


def test_mixed_discordant_pairs_by_hand():
    a = [1.0] * 8 + [0.0] * 2 + [1.0] * 5                       # 8 wins, 2 losses, 5 ties
    b = [0.0] * 8 + [1.0] * 2 + [1.0] * 5
    result = example_test({0: a}, {0: b})
    assert result.p == pytest.approx(2 * (1 + 10 + 45) / 1024)   # 2 · P(X ≤ 2), X ~ Bin(10, 1/2) = 0.109
    assert result.verdict == INCONCLUSIVE and result.mean == pytest.approx(6 / 15)


def test_one_more_discordant_example_the_same_way_never_raises_p():
    for against in range(4):
        ps = [binomial_two_sided(k, k + against) for k in range(against, against + 12)]
        assert all(later <= earlier + 1e-15 for earlier, later in zip(ps, ps[1:])), against
    for n in range(1, 12):                                      # turning a loss into a win never raises p either
        ps = [binomial_two_sided(k, n) for k in range(math.ceil(n / 2), n + 1)]
        assert all(later <= earlier + 1e-15 for earlier, later in zip(ps, ps[1:])), n


def test_no_difference_is_p_one_and_inconclusive():
    same = example_test({0: [0.3, 0.7], 1: [1.0, 0.0]}, {0: [0.3, 0.7], 1: [1.0, 0.0]})
    assert same.p == 1.0 and same.verdict == INCONCLUSIVE and same.exact


def test_continuous_differences_match_the_exact_enumeration():
    """d = (1, 2, 3): the 8 sign patterns sum to ±6, ±4, ±2, 0, 0; |sum| ≥ 6 in 2 of 8, p = 0.25."""
    p, exact = sign_flip_examples(np.array([1.0, 2.0, 3.0]))
    assert not exact and p == pytest.approx(0.25, abs=0.01)
    assert sign_flip_examples(np.array([1.0, 2.0, 3.0]))[0] == p           # a fixed seed: the same p every time


def test_arms_must_score_the_same_examples():
    with pytest.raises(ValueError, match="seed 0: 3 examples against 2"):
        example_test({0: [1.0, 0.0, 1.0]}, {0: [1.0, 0.0]})


def test_example_level_equivalence_by_hand():
    """Every difference 0.1: every bootstrap mean is 0.1, inside ±1 (both one-sided p 0) and outside ±0.05."""
    inside = example_equivalence({0: [0.6, 0.8], 1: [0.5, 0.1]}, {0: [0.5, 0.7], 1: [0.4, 0.0]}, 1.0)
    assert inside.p == 0.0 and inside.verdict == SUPPORTED and inside.mean == pytest.approx(0.1)
    outside = example_equivalence({0: [0.6, 0.8], 1: [0.5, 0.1]}, {0: [0.5, 0.7], 1: [0.4, 0.0]}, 0.05)
    assert outside.p == 1.0 and outside.verdict == INCONCLUSIVE


def test_claim_8_per_epoch_tost_by_hand():
    diffs = [1.0, -1.0, 0.5]
    mean, se = float(np.mean(diffs)), float(np.std(diffs, ddof=1)) / math.sqrt(3)
    from scipy import stats
    result = seed_equivalence(diffs, 5.0)
    assert result.p_low == pytest.approx(stats.t.sf((mean + 5) / se, 2))
    assert result.p_high == pytest.approx(stats.t.cdf((mean - 5) / se, 2))
    assert result.verdict == SUPPORTED and seed_equivalence(diffs, 0.1).verdict == INCONCLUSIVE


def test_holm_per_task_by_hand():
    """p 0.01, 0.02, 0.04 in a family of 3: Holm 0.03, 0.04, 0.04, all below 0.05."""
    verdicts = holm_verdicts([(1.0, 0.01, "difference"), (-1.0, 0.02, "difference"), (0.1, 0.04, "equivalence")])
    assert verdicts == [SUPPORTED, CONTRADICTED, SUPPORTED]
    # p 0.03 and 0.04: Holm 0.06 and max(0.06, 0.04) = 0.06, neither below 0.05 (both were, raw)
    assert holm_verdicts([(1.0, 0.03, "difference"), (1.0, 0.04, "difference")]) == [INCONCLUSIVE, INCONCLUSIVE]


def test_claim_8s_cost_differences_by_hand():
    """Full FT − Hi-ZFO seconds (10, 12, 14): mean 12, s 2, t = 12 / (2/√3) on 2 df; equal ones are undefined."""
    from scipy import stats
    mean, p, verdict = cost_test([10.0, 12.0, 14.0])
    assert mean == pytest.approx(12.0) and p == pytest.approx(2 * stats.t.sf(12 / (2 / math.sqrt(3)), 2))
    assert verdict == SUPPORTED
    assert cost_test([5.0, 5.0, 5.0])[1:] == (None, INCONCLUSIVE)


def test_every_comparison_names_arms_of_the_study_in_their_reading():
    arms = {a.name: a for a in ARMS}
    for c in COMPARISONS:
        assert c.better in arms and c.worse in arms, c
        assert arms[c.better].task == arms[c.worse].task == c.task, c
        assert c.kind in ("difference", "equivalence") and c.measure in (
            "score", "train_seconds", "peak_memory_gb", "seconds_per_epoch"), c
        hizfo = [arms[n] for n in (c.better, c.worse) if arms[n].method == "hizfo"]
        if c.reading and hizfo:
            assert all((("zo_optimizer", "adamw") in a.keys) == (c.reading == "adamw") for a in hizfo), c
    families = {task: sum(c.task == task for c in COMPARISONS) for task in ("pydoc", "wordnet_revdict")}
    assert families == {"pydoc": 6, "wordnet_revdict": 13}
    assert {c.claim for c in COMPARISONS if c.task == "pydoc"} == {"2", "3", "4", "7"}


def test_per_example_scores_give_the_records_metric():
    """On study 1's committed pydoc runs: the mean of the per-example ROUGE-1 is the record's rouge1."""
    folder = ROOT / "results" / "smollm2_cpu" / "runs" / "smollm2-135m" / "pydoc" / "hizfo_zo_off" / "default"
    scores = example_scores(folder / "seed0.predictions.jsonl", "pydoc")
    record = json.loads((folder / "seed0.json").read_text())
    assert len(scores) == 200 and float(np.mean(scores)) == pytest.approx(record["metrics"]["rouge1"], abs=1e-9)
    with pytest.raises(ValueError, match="humaneval_split"):
        example_scores(folder / "seed0.predictions.jsonl", "humaneval_split")


# -- the rules' commit precedes every study-2 record ------------------------------------------------------------
def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def rules_commit() -> str | None:
    """The last commit that changed the rules (the pre-registration), from git history: every record must descend
    from it, so a rule changed after a record fails this test."""
    out = git("log", "-1", "--format=%H", "--", *RULES)
    commits = out.stdout.split() if out.returncode == 0 else []
    return commits[0] if commits else None


def is_ancestor(ancestor: str, descendant: str) -> bool:
    return git("merge-base", "--is-ancestor", ancestor, descendant).returncode == 0


@pytest.mark.subprocess
def test_every_study2_record_was_made_after_its_rules_were_committed():
    records = [(str(p.relative_to(ROOT)), json.loads(p.read_text()).get("provenance", {}).get("git_sha"))
               for p in sorted(STUDY2_RUNS.rglob("seed*.json"))] if STUDY2_RUNS.is_dir() else []
    commit = rules_commit() if records else None                 # zero records: nothing to check, no git needed
    assert preregistration_violations(records, commit, is_ancestor) == []


def test_the_order_check_fails_on_a_record_made_before_the_rules():
    history = {("R", "R"), ("R", "after"), ("before", "R"), ("before", "after")}
    check = lambda a, b: (a, b) in history or a == b                 # noqa: E731  before -> R -> after
    assert preregistration_violations([], "R", check) == []
    assert preregistration_violations([("x.json", "after"), ("y.json", "R")], "R", check) == []
    problems = preregistration_violations([("x.json", "before"), ("y.json", None), ("z.json", "after")], "R", check)
    assert len(problems) == 2 and "x.json: made at before" in problems[0] and "no git_sha" in problems[1]
    assert "no commit of the analysis rules" in preregistration_violations([("x.json", "a")], None, check)[0]


@pytest.mark.subprocess
def test_the_order_check_reads_real_history():
    """On this repository: the rules' first commit descends from study 1's last record commit, not the reverse."""
    commit = rules_commit()
    if commit is None:
        pytest.skip("no git history of the rules here (an export without .git)")
    study1 = json.loads((ROOT / "results/smollm2_cpu/runs/smollm2-135m/pydoc/full_ft/default/seed0.json").read_text())
    earlier = study1["provenance"]["git_sha"]
    assert preregistration_violations([("study1.json", earlier)], commit, is_ancestor)
    assert preregistration_violations([("now.json", commit)], commit, is_ancestor) == []
