"""The second CPU study's analysis rules (experiment=smollm2_study2_cpu), fixed before its first record.

One test per comparison type, the same for every task, with no switch on the data:

* **A difference** (claims 1-4, 5, 6 and 7's collapse) is decided by the *example-level* paired sign-flip
  permutation test, stratified by seed: d = score_A − score_B per (seed, evaluation example), over the seeds both
  arms have and the examples both evaluated; the statistic is the mean of d; under the null each d is as likely
  −d, independently. p is exact where every non-zero |d| is the same (0/1 scores: then it is the exact McNemar test
  on the discordant pairs pooled over seeds, two-sided binomial), else Monte Carlo with ``PERMUTATIONS`` sign draws
  from a fixed seed. Supported: p < α and mean > 0 (the paper's direction); contradicted: p < α and mean < 0;
  otherwise inconclusive (all differences 0: p = 1). This test generalises over evaluation examples for the
  trained models at hand, not over training seeds; the seed-level interval below is printed beside it.
* **An equivalence** (claim 7's stability, claim 8 per epoch) is decided by TOST: equivalent when both one-sided
  p values are below α. Scores: the example-level stratified bootstrap (examples resampled within each seed,
  ``BOOTSTRAPS`` draws from a fixed seed), p_low = share of bootstrap means ≤ −δ, p_high = share ≥ +δ. Seconds per
  epoch (claim 8), which exist per run only: the seed-level paired t TOST. δ: claim 7, ``STABILITY_MARGIN`` × the
  r = 0.1 arm's mean score; claim 8, ``PER_EPOCH_MARGIN`` × Full FT's mean seconds per epoch.
* **Seed level, reported beside every difference, never deciding**: the paired t interval over seeds, its t p
  (undefined when every difference is equal, shown as such), and the exact sign-flip p over seeds at every n.
* **A cost difference** (claim 8 as the paper ran it: training seconds, peak memory; one value per run) is decided
  by the seed-level two-sided paired t test (p < α in the paper's direction supports); where it is undefined
  (fewer than two pairs, or every difference equal) the comparison is inconclusive.
* **Holm** over the deciding comparisons of each task (claim 8 per epoch included: it is pre-registered here). The
  comparisons, and so each task's family, are listed in analysis.study.study2_spec.COMPARISONS.

The rule holds that more consistent evidence never gets a weaker verdict: for 0/1 scores, one more discordant
example in the same direction never raises p (tests/unit/test_study_prereg.py checks it, and the all-equal case).
``preregistration_violations`` checks that every study-2 record was made at or after the commit that fixed these
rules.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
from scipy import stats

from analysis.study.stats import (ALPHA, CONTRADICTED, INCONCLUSIVE, SUPPORTED, Interval, difference_interval, holm,
                                  sign_flip_p, t_test_p)

PERMUTATIONS = 100_000
BOOTSTRAPS = 10_000
RNG_SEED = 20261207              # the fixed seed of every Monte Carlo draw here
STABILITY_MARGIN = 0.05          # claim 7: δ = 0.05 × the r = 0.1 mean, as study 1 (analysis.study.DEFAULT_MARGIN)
PER_EPOCH_MARGIN = 0.10          # claim 8 per epoch: δ = 0.10 × Full FT's mean seconds per epoch
ExampleScores = dict[int, Sequence[float]]       # seed -> the task's score of each evaluation example, in order


@dataclass(frozen=True)
class ExampleTest:
    """The example-level paired test of A − B: mean difference, p, and its verdict (raw)."""
    mean: float
    seeds: tuple[int, ...]
    pairs: int
    p: float
    exact: bool
    favour: int = 0              # 0/1 scores: discordant examples favouring A, and B
    against: int = 0

    @property
    def verdict(self) -> str:
        return verdict_at(self.mean, self.p)


def verdict_at(mean: float, p: Optional[float], alpha: float = ALPHA) -> str:
    """The paper's direction is mean > 0; a significant p gives its sign's verdict, anything else inconclusive."""
    if p is None or p >= alpha or mean == 0:
        return INCONCLUSIVE
    return SUPPORTED if mean > 0 else CONTRADICTED


def paired_examples(a: ExampleScores, b: ExampleScores) -> dict[int, np.ndarray]:
    """seed -> d = a − b per example, over the seeds both have; each seed's two runs must score the same examples."""
    pairs = {}
    for seed in sorted(set(a) & set(b)):
        left, right = np.asarray(a[seed], dtype=float), np.asarray(b[seed], dtype=float)
        if left.shape != right.shape:
            raise ValueError(f"seed {seed}: {left.size} examples against {right.size}; the arms must score the same")
        pairs[seed] = left - right
    return pairs


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p of k successes in n fair trials: the outcomes at most as likely as k (McNemar's exact)."""
    if n == 0:
        return 1.0
    pmf = stats.binom.pmf(np.arange(n + 1), n, 0.5)
    return float(min(1.0, pmf[pmf <= pmf[k] * (1 + 1e-9)].sum()))


def sign_flip_examples(differences: np.ndarray, draws: int = PERMUTATIONS, seed: int = RNG_SEED) -> tuple[float, bool]:
    """(two-sided p, exact?) of the sign-flip test on ``differences`` (the mean's distance from 0)."""
    nonzero = differences[differences != 0]
    if nonzero.size == 0:
        return 1.0, True
    sizes = np.abs(nonzero)
    if np.allclose(sizes, sizes[0], rtol=0, atol=1e-12 * max(1.0, float(sizes[0]))):
        return binomial_two_sided(int((nonzero > 0).sum()), int(nonzero.size)), True
    observed = abs(float(nonzero.sum()))
    rng, hits, left = np.random.default_rng(seed), 0, draws
    while left:
        chunk = min(left, max(1, 2_000_000 // nonzero.size))
        signs = rng.integers(0, 2, size=(chunk, nonzero.size), dtype=np.int8) * 2 - 1
        hits += int((np.abs(signs @ nonzero) >= observed - 1e-9 * max(1.0, observed)).sum())
        left -= chunk
    return (1 + hits) / (1 + draws), False


def example_test(a: ExampleScores, b: ExampleScores) -> ExampleTest:
    """The deciding test of a difference A − B (module docstring)."""
    pairs = paired_examples(a, b)
    if not pairs:
        return ExampleTest(0.0, (), 0, 1.0, True)
    d = np.concatenate(list(pairs.values()))
    p, exact = sign_flip_examples(d)
    favour, against = int((d > 0).sum()), int((d < 0).sum())
    return ExampleTest(float(d.mean()) if d.size else 0.0, tuple(pairs), int(d.size), p, exact, favour, against)


def bootstrap_means(pairs: dict[int, np.ndarray], draws: int = BOOTSTRAPS, seed: int = RNG_SEED) -> np.ndarray:
    """Means of d with each seed's examples resampled within that seed (seeds weighted by their example counts)."""
    rng = np.random.default_rng(seed)
    total = sum(v.size for v in pairs.values())
    sums = np.zeros(draws)
    for values in pairs.values():
        picks = rng.integers(0, values.size, size=(draws, values.size))
        sums += values[picks].sum(axis=1)
    return sums / max(1, total)


@dataclass(frozen=True)
class Equivalence:
    """A TOST: the mean difference, the margin, the two one-sided p values; p = the larger (equivalence)."""
    mean: Optional[float]
    delta: float
    p_low: Optional[float]
    p_high: Optional[float]

    @property
    def p(self) -> Optional[float]:
        return None if self.p_low is None else max(self.p_low, self.p_high)

    @property
    def verdict(self) -> str:
        return SUPPORTED if self.p is not None and self.p < ALPHA else INCONCLUSIVE


def example_equivalence(a: ExampleScores, b: ExampleScores, delta: float) -> Equivalence:
    """Bootstrap TOST of A − B against ±δ over examples, stratified by seed (claim 7's stability)."""
    pairs = paired_examples(a, b)
    if not pairs or delta <= 0:
        return Equivalence(None, delta, None, None)
    means = bootstrap_means(pairs)
    mean = float(np.concatenate(list(pairs.values())).mean())
    return Equivalence(mean, delta, float((means <= -delta).mean()), float((means >= delta).mean()))


def seed_equivalence(differences: Sequence[float], delta: float) -> Equivalence:
    """Seed-level paired t TOST (claim 8's seconds per epoch, one value per run)."""
    above, below = t_test_p(differences, -delta, "greater"), t_test_p(differences, delta, "less")
    mean = float(np.mean(differences)) if len(differences) else None
    return Equivalence(mean, delta, above, below)


@dataclass(frozen=True)
class SeedLevel:
    """Printed beside every difference, never deciding: t interval, t p (None when s = 0), sign-flip p."""
    interval: Interval
    t_p: Optional[float]
    sign_flip_p: Optional[float]


def seed_level(differences: Sequence[float]) -> SeedLevel:
    values = [float(v) for v in differences]
    interval = difference_interval(values)
    undefined = len(values) < 2 or interval.sd == 0
    t_p = None if undefined else seed_t_p(values)
    return SeedLevel(interval, t_p, sign_flip_p(values) if values else None)


def cost_test(differences: Sequence[float]) -> tuple[Optional[float], Optional[float], str]:
    """Claim 8's time and memory, Full FT − Hi-ZFO per seed: (mean, the t test's p or None, verdict)."""
    level = seed_level(differences)
    mean = level.interval.mean
    return mean, level.t_p, verdict_at(mean or 0.0, level.t_p)


def seed_t_p(values: Sequence[float]) -> float:
    """The two-sided one-sample t test's p of mean 0 (values not all equal)."""
    return float(stats.ttest_1samp(values, 0.0).pvalue)


def holm_verdicts(tests: Sequence[tuple[float, Optional[float], str]]) -> list[str]:
    """Holm over one task's deciding comparisons: (mean, p, kind) with kind 'difference' or 'equivalence'; the
    verdict each gets at its adjusted p."""
    present = [i for i, (_, p, _) in enumerate(tests) if p is not None]
    adjusted = dict(zip(present, holm([tests[i][1] for i in present])))
    out = []
    for i, (mean, _, kind) in enumerate(tests):
        p = adjusted.get(i)
        if kind == "equivalence":
            out.append(SUPPORTED if p is not None and p < ALPHA else INCONCLUSIVE)
        else:
            out.append(verdict_at(mean, p))
    return out


# -- per-example scores, from a run's predictions file (hizfo.run.predictions) ---------------------------------
def example_scores(predictions: Path, task: str) -> list[float]:
    """The task's first metric on each evaluation example alone, in the file's order: pydoc ROUGE-1 F1 × 100
    (rouge-score, no stemmer, the best reference), wordnet_revdict exact match × 100 (the word or a one-word
    synonym, SQuAD normalisation). Their mean is the record's metric."""
    from hizfo.eval.metrics import exact_match, rouge_scores
    rows = [json.loads(line) for line in predictions.read_text().splitlines() if line.strip()]
    if task == "pydoc":
        return [rouge_scores([r["prediction"]], [r["references"]])["rouge1"] for r in rows]
    if task == "wordnet_revdict":
        return [exact_match([r["prediction"]], [r["references"]]) for r in rows]
    raise ValueError(f"task {task!r}: no per-example score is pre-registered (pydoc, wordnet_revdict)")


# -- the order of commits: rules before records ----------------------------------------------------------------
def preregistration_violations(records: Iterable[tuple[str, Optional[str]]], rules_commit: Optional[str],
                               is_ancestor: Callable[[str, str], bool]) -> list[str]:
    """One line per record not made at or after ``rules_commit``: ``records`` is (path, the record's provenance
    git_sha); ``is_ancestor(a, b)`` says whether commit a is b or an ancestor of it (git merge-base --is-ancestor).
    No record: no violation, whatever the history."""
    problems = []
    for path, sha in records:
        if rules_commit is None:
            problems.append(f"{path}: a study-2 record exists but no commit of the analysis rules was found")
        elif not sha:
            problems.append(f"{path}: its provenance has no git_sha, so it cannot be shown to follow the rules")
        elif not is_ancestor(rules_commit, sha):
            problems.append(f"{path}: made at {sha[:12]}, which does not descend from the rules' commit "
                            f"{rules_commit[:12]}")
    return problems
