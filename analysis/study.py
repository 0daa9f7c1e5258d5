"""The real-model study: arms with 95 % t intervals over seeds, paired differences, the paper's claims
checked one by one, and plots.

    python -m analysis.study --results results/smollm2 --out results/smollm2/report [--margin 0.05]

Reads only the records under ``--results`` (analysis.loading; status ``ok`` only) and writes to ``--out``:
``report.md`` (a table of arms per task and the paired differences), ``claims.md`` (one row per claim of the
paper, with its numbers, its verdict and the criterion behind it), ``study.json`` (the same numbers), and PNG + PDF
plots: learning curves, the arms' scores, and the ρ / r / α sweeps.

An *arm* is (model, task, method, variant). The method is analysis.specs.method_label's (``hizfo`` with
``alpha_mode=loss`` shows as ``hizfo_alpha_loss``, so the two readings of α never mix). The variant is the record's
``config["variant"]``, split into key=value pairs (hizfo.run.runspec.parse_variant) and cleaned so that the same
computation gets the same name: ``method.alpha_mode`` is left out (it is in the method's name); so are keys that
only say where data or weights come from (``model.path``, ``task.data_dir``, ``task.allow_code_execution``, ...);
so are pairs that every record of the task shares (the study's common settings, listed in the report); and so is
a swept hyperparameter (ρ, α, r) set to the value the arm's method has when that key is not overridden (read
from those records' own ``config["method"]``). What is left is the arm's variant, ``default`` when nothing is.

Intervals are Student-t: mean ± t_{0.975, n-1} · s / √n over seeds (scipy.stats.t), and over the per-seed
differences of two arms for a paired difference (seeds present in both arms). Fewer than two values give no
interval ("–"); a verdict then says inconclusive.

Every comparison behind a verdict is one paired test with a p value: a two-sided paired t test of "no difference"
(significant ⇔ the 95 % CI excludes 0), or, for claim 7's stability, an equivalence test (TOST: significant ⇔ the
90 % CI lies inside ±δ). The comparisons of one (model, task) are one family; their p values are Holm-adjusted
(Holm 1979, step-down) and the claims.md gives both verdicts, raw and Holm, with the family's size. Each
difference also gets the smallest difference its seeds could have detected: the true mean difference at which the
same two-sided paired t test at α = 0.05 has 80 % power, given the pairs' number and their observed s.d.
(noncentral t, scipy.stats.nct).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from analysis.loading import Report, load_records  # noqa: E402
from analysis.specs import METHOD_DISPLAY, TASK_DISPLAY, TASK_SCORES  # noqa: E402
from analysis.sweeps import save_figure  # noqa: E402
from hizfo.run.runspec import is_reporting, parse_variant  # noqa: E402

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE           # every test's level, two-sided for differences
POWER = 0.80                     # the power behind the smallest detectable difference
EQUIVALENCE_CONFIDENCE = 1 - 2 * ALPHA   # TOST at α = 0.05 is the 90 % CI inside ±δ (Schuirmann 1987)
# Claim 7's equivalence margin, fixed before any study result: δ = 0.05 × the r = 0.1 arm's mean score (on pydoc's
# ROUGE-1 near 30 that is ±1.5 points). --margin changes it; a changed margin must be said in the report.
DEFAULT_MARGIN = 0.05
# metric keys per task, the first is the one claims use (hizfo/tasks/pydoc.py, hizfo/tasks/humaneval.py score())
TASK_METRICS: dict[str, tuple[str, ...]] = {"pydoc": ("rouge1", "rouge2", "rougeL"), "humaneval_split": ("pass@1",),
                                            "wordnet_revdict": ("exact_match", "exact_match_word")}
METRIC_DECIMALS = {"pass@1": 3, "accuracy": 3}
# variant keys the method's name already carries (analysis.specs.method_label); the keys that do not change what
# a run computes are RunSpec's (hizfo.run.runspec.is_reporting)
LABEL_KEYS = ("method.alpha_mode",)
# the variant keys that move each swept hyperparameter (r can be set as lr_ratio or as an absolute zo_lr)
SWEEP_KEYS: dict[str, tuple[str, ...]] = {"rho": ("method.rho",), "alpha": ("method.alpha",),
                                          "lr_ratio": ("method.lr_ratio", "method.zo_lr")}
SWEEP_SYMBOLS = {"rho": "ρ", "alpha": "α", "lr_ratio": "r = η_ZO/η_FO"}
HIZFO = "hizfo"
HIZFO_READINGS = ("hizfo", "hizfo_alpha_loss")        # α scales the ZO update | α weights the ZO loss
SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
NO_RECORDS = "inconclusive (no records)"


# -- intervals -------------------------------------------------------------------------------------------------
@dataclass
class Interval:
    """Mean and 95 % t interval of some values; ``lo``/``hi`` are None with fewer than two values."""
    n: int
    mean: Optional[float]
    lo: Optional[float] = None
    hi: Optional[float] = None
    sd: Optional[float] = None           # the values' sample standard deviation (ddof 1)

    @property
    def half(self) -> Optional[float]:
        return None if self.lo is None else (self.hi - self.lo) / 2

    def show(self, decimals: int = 2) -> str:
        """``12.34 ± 0.56``; ``12.34 ± –`` for a single value; ``–`` for none."""
        if self.mean is None:
            return "–"
        return f"{self.mean:.{decimals}f} ± {'–' if self.half is None else f'{self.half:.{decimals}f}'}"

    def show_ci(self, decimals: int = 2) -> str:
        """``+1.23 [0.45, 2.01]`` (for differences)."""
        if self.mean is None:
            return "–"
        ci = "–" if self.lo is None else f"[{self.lo:+.{decimals}f}, {self.hi:+.{decimals}f}]"
        return f"{self.mean:+.{decimals}f} {ci}"


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean ± t_{(1+c)/2, n-1} · s / √n (s the sample standard deviation); no interval for n < 2."""
    data = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    n = len(data)
    if n == 0:
        return Interval(0, None)
    mean = float(np.mean(data))
    if n < 2:
        return Interval(n, mean)
    sd = float(np.std(data, ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * sd / math.sqrt(n))
    return Interval(n, mean, mean - half, mean + half, sd)


def _clean(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def t_test_p(values: Sequence[float], null: float = 0.0, alternative: str = "two-sided") -> Optional[float]:
    """The one-sample t test's p value for mean = ``null`` (paired differences); None with fewer than two values.

    ``alternative``: two-sided | greater (mean > null) | less. Identical values (s = 0) give p = 0 when their mean
    is on the alternative's side of ``null`` and 1 otherwise, where scipy would give nan.
    """
    data = _clean(values)
    if len(data) < 2:
        return None
    mean = float(np.mean(data))
    if float(np.std(data, ddof=1)) == 0.0:
        beyond = {"two-sided": mean != null, "greater": mean > null, "less": mean < null}[alternative]
        return 0.0 if beyond else 1.0
    return float(stats.ttest_1samp(data, null, alternative=alternative).pvalue)


def tost(values: Sequence[float], delta: float) -> tuple[Optional[float], Optional[float]]:
    """Two one-sided t tests against the margin ±``delta``: (p of equivalence, p of non-equivalence).

    Equivalence (|mean| < δ) has p = max(p[mean > −δ], p[mean < δ]); below ALPHA ⇔ the 90 % CI lies inside ±δ.
    Non-equivalence has p = min(p[mean > δ], p[mean < −δ]); below ALPHA ⇔ the 90 % CI lies wholly outside ±δ.
    """
    above, below = t_test_p(values, -delta, "greater"), t_test_p(values, delta, "less")
    if above is None:
        return None, None
    beyond = min(t_test_p(values, delta, "greater"), t_test_p(values, -delta, "less"))
    return max(above, below), beyond


def min_detectable(n: int, sd: Optional[float], alpha: float = ALPHA, power: float = POWER) -> Optional[float]:
    """The smallest true mean difference a two-sided paired t test on ``n`` pairs with s.d. ``sd`` finds with
    ``power``: solves P(|T| > t_{1-α/2, n-1}) = power for T ~ noncentral t(n-1, δ√n/sd). None for n < 2."""
    if n < 2 or sd is None:
        return None
    if sd == 0:
        return 0.0
    df, crit = n - 1, stats.t.ppf(1 - alpha / 2, n - 1)

    def shortfall(effect: float) -> float:          # effect in units of sd; the far tail is < 1e-6 (nan in scipy)
        nc = effect * math.sqrt(n)
        return float(stats.nct.sf(crit, df, nc) + np.nan_to_num(stats.nct.cdf(-crit, df, nc)) - power)
    from scipy.optimize import brentq
    high = 1.0
    while shortfall(high) < 0:                      # n = 2 needs ~ 10 s.d.; widen the bracket until power is met
        high *= 2
    return float(brentq(shortfall, 0.0, high) * sd)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p values (Holm 1979): sorted ascending, p_(i) · (m − i + 1), made monotone."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[index]))
        adjusted[index] = running
    return adjusted


def verdict(interval: Interval) -> str:
    """For a difference oriented so that > 0 is the paper's direction: the CI above 0, below 0, or neither."""
    if interval.lo is None:
        return INCONCLUSIVE
    if interval.lo > 0:
        return SUPPORTED
    if interval.hi < 0:
        return CONTRADICTED
    return INCONCLUSIVE


# -- records -> arms -------------------------------------------------------------------------------------------
def _ignored(key: str) -> bool:
    return key in LABEL_KEYS or is_reporting(key)


def _swept_key(variant_key: str) -> Optional[str]:
    return next((name for name, keys in SWEEP_KEYS.items() if variant_key in keys), None)


def _same(a: Any, b: Any) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return False


def assign_arms(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[tuple[str, str], list[str]]]:
    """Add the cleaned ``arm_variant`` column (module docstring); returns the frame and each task's shared pairs."""
    frame = frame.copy()
    pairs = [[(k, v) for k, v in parse_variant(variant) if not _ignored(k)] for variant in frame["variant"]]
    frame["_pairs"] = pairs
    shared: dict[tuple[str, str], list[str]] = {}
    for (model, task), group in frame.groupby(["model", "task"], sort=False):
        common = set.intersection(*(set(p) for p in group["_pairs"]))
        shared[(model, task)] = sorted(f"{k}={v}" for k, v in common)
        for index in group.index:
            frame.at[index, "_pairs"] = [p for p in frame.at[index, "_pairs"] if p not in common]
    # the value a swept key has where the variant leaves it alone, per (model, task, method)
    defaults: dict[tuple[str, str, str, str], float] = {}
    for (model, task, method), group in frame.groupby(["model", "task", "method"], sort=False):
        for name, keys in SWEEP_KEYS.items():
            untouched = [row[name] for _, row in group.iterrows()
                         if not any(k in keys for k, _ in row["_pairs"]) and row.get(name) is not None
                         and not pd.isna(row.get(name))]
            if untouched and all(_same(v, untouched[0]) for v in untouched):
                defaults[(model, task, method, name)] = float(untouched[0])
    variants = []
    for _, row in frame.iterrows():
        kept = []
        for key, value in row["_pairs"]:
            name = _swept_key(key)
            default = defaults.get((row["model"], row["task"], row["method"], name)) if name else None
            if name and default is not None and _same(row.get(name), default):
                continue                                    # set to its default: the default arm
            kept.append(f"{key}={value}")
        variants.append(",".join(sorted(kept)) or "default")
    frame["arm_variant"] = variants
    return frame.drop(columns=["_pairs"]), shared


def load_study(results_dir: str | Path, report: Optional[Report] = None) -> tuple[pd.DataFrame, dict]:
    """One row per (arm, seed) from the ok records (newest record when a seed repeats), plus the shared settings."""
    report = report or Report()
    frame = load_records(results_dir, report)
    if frame.empty:
        return frame, {}
    for _, row in frame[frame["status"] == "failed"].iterrows():
        report.note(f"failed run left out: {row['path']} ({row['error'] or 'no error recorded'})")
    ok = frame[frame["status"] == "ok"]
    if ok.empty:
        return ok, {}
    ok, shared = assign_arms(ok)
    ok = ok.sort_values("created")
    keys = ["model", "task", "method", "arm_variant", "seed"]
    for _, group in ok[ok.duplicated(keys, keep=False)].groupby(keys, sort=False):
        newest, older = group.iloc[-1], group.iloc[:-1]
        if (older["semantic_key"] != newest["semantic_key"]).any():   # not the same computation (loading.semantic_key)
            report.warn(f"{', '.join(older['path'])}: same arm and seed as {newest['path']} but a different config; "
                        f"using the newest ({newest['path']})")
        else:
            report.note(f"{', '.join(older['path'])}: same arm, seed and config as {newest['path']}; counted once")
    ok = ok.drop_duplicates(keys, keep="last").reset_index(drop=True)
    epochs = [_epochs_trained(row) for _, row in ok.iterrows()]
    ok["seconds_per_epoch"] = [s / e if e and s is not None and not pd.isna(s) else None
                               for s, e in zip(ok["train_seconds"], epochs)]
    return ok, shared


def task_metrics(task: str, frame: pd.DataFrame) -> tuple[str, ...]:
    """The metric keys to show for a task, the claims' metric first."""
    keys = TASK_METRICS.get(task) or (TASK_SCORES[task].keys if task in TASK_SCORES else ())
    present = tuple(k for k in keys if f"metric.{k}" in frame.columns)
    if present:
        return present
    return tuple(sorted(c[len("metric."):] for c in frame.columns if c.startswith("metric.")))[:1]


def decimals(metric: str) -> int:
    return METRIC_DECIMALS.get(metric, 2)


@dataclass
class Arm:
    """One arm and its seeds' values."""
    model: str
    task: str
    method: str
    variant: str
    rows: pd.DataFrame = field(repr=False)

    @property
    def seeds(self) -> list[int]:
        return sorted(int(s) for s in self.rows["seed"])

    def values(self, column: str) -> dict[int, float]:
        if column not in self.rows.columns:
            return {}
        return {int(s): float(v) for s, v in zip(self.rows["seed"], self.rows[column]) if v is not None
                and not pd.isna(v)}

    def interval(self, column: str) -> Interval:
        return t_interval(list(self.values(column).values()))

    def swept(self, name: str) -> Optional[float]:
        values = {float(v) for v in self.rows.get(name, pd.Series(dtype=float)) if v is not None and not pd.isna(v)}
        return values.pop() if len(values) == 1 else None

    @property
    def label(self) -> str:
        name = METHOD_DISPLAY.get(self.method, self.method)
        return name if self.variant == "default" else f"{name} [{self.variant}]"


def arms_of(frame: pd.DataFrame) -> list[Arm]:
    arms = []
    for (model, task, method, variant), rows in frame.groupby(["model", "task", "method", "arm_variant"], sort=True):
        arms.append(Arm(model, task, method, variant, rows))
    return arms


def find_arm(arms: list[Arm], model: str, task: str, method: str, variant: str = "default") -> Optional[Arm]:
    return next((a for a in arms if (a.model, a.task, a.method, a.variant) == (model, task, method, variant)), None)


def sweep_arms(arms: list[Arm], model: str, task: str, method: str, name: str) -> dict[float, Arm]:
    """The arms of one ρ / α / r sweep: the default arm and those whose variant moves only ``name``."""
    found: dict[float, Arm] = {}
    for arm in arms:
        if (arm.model, arm.task, arm.method) != (model, task, method):
            continue
        keys = [key for key, _ in parse_variant(arm.variant)]
        if all(k in SWEEP_KEYS[name] for k in keys):
            value = arm.swept(name)
            if value is not None and (value not in found or arm.variant == "default"):
                found[round(value, 6)] = arm
    return dict(sorted(found.items()))


def paired(a: Arm, b: Arm, column: str) -> tuple[Interval, list[int]]:
    """a − b over the seeds both arms have: the mean difference and its 95 % t interval."""
    va, vb = a.values(column), b.values(column)
    seeds = sorted(set(va) & set(vb))
    return t_interval([va[s] - vb[s] for s in seeds]), seeds


# -- claims ----------------------------------------------------------------------------------------------------
@dataclass
class Comparison:
    """One paired comparison inside a claim: ``better − worse`` in the paper's direction.

    ``kind``: ``difference`` (a two-sided paired t test of 0; ``interval`` is the 95 % CI) or ``equivalence`` (TOST
    against ±``margin``; ``interval`` is the 90 % CI). ``p`` is the test that decides the verdict: for a difference
    its two-sided p (significant: supported above 0, contradicted below); for an equivalence the smaller of the
    equivalence and non-equivalence p (significant: supported inside ±δ, contradicted outside). ``decides``: False
    for a comparison shown for context only (claim 8's time per epoch), which is outside the Holm family.
    """
    what: str
    column: str
    interval: Interval
    seeds: list[int]
    verdict: str
    note: str = ""
    kind: str = "difference"
    p: Optional[float] = None
    p_holm: Optional[float] = None
    holm_verdict: str = INCONCLUSIVE
    min_detectable: Optional[float] = None   # differences: at α = 0.05 two-sided, 80 % power (min_detectable)
    margin: Optional[float] = None
    decides: bool = True
    significant: str = INCONCLUSIVE          # the verdict a significant p gives

    def verdict_at(self, p: Optional[float]) -> str:
        return self.significant if p is not None and p < ALPHA else INCONCLUSIVE


@dataclass
class Claim:
    number: str
    text: str
    task: str
    model: str
    criterion: str
    comparisons: list[Comparison]
    verdict: str
    note: str = ""
    rule: str = "single"                     # how the comparisons' verdicts combine (decide())
    holm_verdict: str = INCONCLUSIVE
    family_size: int = 0                     # the comparisons of this (model, task) that Holm adjusts over


def _compare(better: Optional[Arm], worse: Optional[Arm], column: str, what: str) -> Optional[Comparison]:
    """A paired difference: 95 % CI, two-sided p, the smallest detectable difference."""
    if better is None or worse is None:
        return None
    va, vb = better.values(column), worse.values(column)
    seeds = sorted(set(va) & set(vb))
    diffs = [va[s] - vb[s] for s in seeds]
    interval = t_interval(diffs)
    p = t_test_p(diffs)
    significant = INCONCLUSIVE if interval.mean is None else SUPPORTED if interval.mean > 0 else CONTRADICTED
    note = "" if interval.n >= 2 else f"{interval.n} paired seed(s): no interval"
    comparison = Comparison(what, column, interval, seeds, INCONCLUSIVE, note, p=p, significant=significant,
                            min_detectable=min_detectable(interval.n, interval.sd))
    comparison.verdict = comparison.verdict_at(p)
    return comparison


def _equivalent(a: Arm, b: Arm, column: str, what: str, delta: float) -> Comparison:
    """TOST of a − b against ±δ: the 90 % CI, and the p of whichever of equivalence / non-equivalence is smaller."""
    va, vb = a.values(column), b.values(column)
    seeds = sorted(set(va) & set(vb))
    diffs = [va[s] - vb[s] for s in seeds]
    interval = t_interval(diffs, EQUIVALENCE_CONFIDENCE)
    p_eq, p_ne = tost(diffs, delta)
    note = f"equivalence margin δ = {delta:.3g}" + ("" if interval.n >= 2 else f"; {interval.n} paired seed(s)")
    comparison = Comparison(what, column, interval, seeds, INCONCLUSIVE, note, kind="equivalence", margin=delta)
    if p_eq is not None:
        comparison.p, comparison.significant = (p_eq, SUPPORTED) if p_eq <= p_ne else (p_ne, CONTRADICTED)
    comparison.verdict = comparison.verdict_at(comparison.p)
    return comparison


def _missing(*named: tuple[str, Optional[Arm]]) -> str:
    return "no records for " + ", ".join(name for name, arm in named if arm is None)


def _simple_claim(number: str, text: str, model: str, task: str, better: tuple[str, Optional[Arm]],
                  worse: tuple[str, Optional[Arm]], column: str, note: str = "") -> Claim:
    criterion = (f"supported when the 95 % CI of the paired difference {better[0]} − {worse[0]} (the task's score, "
                 f"same seeds) lies above 0, contradicted when it lies below 0, otherwise inconclusive")
    comparison = _compare(better[1], worse[1], column, f"{better[0]} − {worse[0]}")
    if comparison is None:
        return Claim(number, text, task, model, criterion, [], NO_RECORDS, "; ".join(
            x for x in (_missing(better, worse), note) if x))
    return Claim(number, text, task, model, criterion, [comparison], comparison.verdict,
                 "; ".join(x for x in (comparison.note, note) if x))


def _combine(verdicts: list[str]) -> str:
    if any(v == CONTRADICTED for v in verdicts):
        return CONTRADICTED
    if verdicts and all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    return INCONCLUSIVE


def decide(claim: Claim, holm_adjusted: bool = False) -> str:
    """The claim's verdict from its comparisons' verdicts (raw or Holm), by the claim's rule (its criterion)."""
    if not claim.comparisons:
        return claim.verdict                                        # no records: stays as it was built
    verdict_of = (lambda c: c.holm_verdict) if holm_adjusted else (lambda c: c.verdict)
    deciding = [c for c in claim.comparisons if c.decides]
    if claim.rule == "rho":                           # interior − end comparisons; see rho_claim
        interior = sorted({c.what.split(" − ")[0] for c in deciding})
        ends = sorted({c.what.split(" − ")[1] for c in deciding})
        peak = any(all(verdict_of(c) == SUPPORTED for c in deciding if c.what.startswith(m + " ")) for m in interior)
        valley = any(all(verdict_of(c) == CONTRADICTED for c in deciding if c.what.endswith(" " + e)) for e in ends)
        return SUPPORTED if peak and not valley else CONTRADICTED if valley and not peak else INCONCLUSIVE
    if claim.rule == "lr_ratio":
        collapse = _combine([verdict_of(c) for c in deciding if c.kind == "difference"])
        stability = _combine([verdict_of(c) for c in deciding if c.kind == "equivalence"])
        return _combine([collapse, stability])
    if claim.rule == "cost_time_only":                # memory kinds differ: time alone can only contradict
        return CONTRADICTED if verdict_of(deciding[0]) == CONTRADICTED else INCONCLUSIVE
    return _combine([verdict_of(c) for c in deciding])


def rho_claim(arms: list[Arm], model: str, task: str, column: str) -> Claim:
    """(6) An inverted U over ρ: an intersection–union test per interior ρ (both ends beaten, each significantly)."""
    criterion = ("with the ρ values the records hold (at least three; the smallest and largest are the ends), "
                 "for each interior ρ the two paired differences score(ρ) − score(end), each a two-sided paired t "
                 "test: supported when some interior ρ beats both ends significantly (an intersection–union test: "
                 "both must be significant, so the pair needs no correction of its own); contradicted when one end "
                 "beats every interior ρ significantly (monotone or U-shaped, not an inverted U); otherwise "
                 "inconclusive")
    text = "(6) the score is an inverted U over ρ (the FO fraction)"
    sweep = sweep_arms(arms, model, task, HIZFO, "rho")
    if len(sweep) < 3:
        return Claim("6", text, task, model, criterion, [], NO_RECORDS,
                     f"ρ values with records: {', '.join(f'{v:g}' for v in sweep) or 'none'}; need three",
                     rule="rho")
    values = list(sweep)
    ends, interior = (values[0], values[-1]), values[1:-1]
    comparisons = [_compare(sweep[middle], sweep[end], column, f"ρ={middle:g} − ρ={end:g}")
                   for middle in interior for end in ends]
    claim = Claim("6", text, task, model, criterion, comparisons, INCONCLUSIVE,
                  f"ρ values: {', '.join(map(str, values))}", rule="rho")
    claim.verdict = decide(claim)
    return claim


def lr_ratio_claim(arms: list[Arm], model: str, task: str, column: str, margin: float) -> Claim:
    """(7) r stable in [0.1, 0.5] (TOST against a margin fixed in advance), collapse from 0.7."""
    criterion = (f"two parts, both needed. Collapse: for every r ≥ 0.7 in the records, the paired 95 % CI of "
                 f"score(r=0.1) − score(r) lies above 0 (below 0 contradicts). Stability: for every r in (0.1, 0.5], "
                 f"an equivalence test (TOST, two one-sided paired t tests at 5 %, i.e. the 90 % CI) of "
                 f"score(r) − score(r=0.1) against ±δ, δ = {margin:g} × |mean score at r=0.1| (a margin fixed in "
                 f"analysis/study.py before the study ran): the 90 % CI inside ±δ supports, wholly outside ±δ "
                 f"contradicts, otherwise inconclusive (a CI that merely contains 0 shows nothing). Supported when "
                 f"both parts are; contradicted when either is; otherwise inconclusive")
    text = "(7) r = η_ZO/η_FO is stable in [0.1, 0.5] and collapses at 0.7"
    sweep = sweep_arms(arms, model, task, HIZFO, "lr_ratio")
    base = sweep.get(0.1)
    stable = [v for v in sweep if 0.1 < v <= 0.5]
    high = [v for v in sweep if v >= 0.7]
    if base is None or not stable or not high:
        return Claim("7", text, task, model, criterion, [], NO_RECORDS,
                     f"r values with records: {', '.join(f'{v:g}' for v in sweep) or 'none'}; need 0.1, one in "
                     f"(0.1, 0.5] and one ≥ 0.7", rule="lr_ratio")
    comparisons = [_compare(base, sweep[v], column, f"r=0.1 − r={v:g}") for v in high]
    delta = margin * abs(base.interval(column).mean or 0.0)
    equivalence = [_equivalent(sweep[v], base, column, f"r={v:g} − r=0.1 (90 % CI within ±{delta:.3g}?)", delta)
                   for v in stable]
    collapse = _combine([c.verdict for c in comparisons])
    stability = _combine([c.verdict for c in equivalence])
    claim = Claim("7", text, task, model, criterion, comparisons + equivalence, INCONCLUSIVE,
                  f"collapse: {collapse}; stability: {stability}", rule="lr_ratio")
    claim.verdict = decide(claim)
    return claim


def alpha_claim(arms: list[Arm], model: str, task: str, column: str) -> Claim:
    """(5) α = 0.1 beats α = 0, in the loss reading only (under the update reading α = 0 is the ZO-off control)."""
    sweep = sweep_arms(arms, model, task, "hizfo_alpha_loss", "alpha")
    return _simple_claim("5", "(5) α = 0.1 beats α = 0, tested with α weighting the ZO loss (alpha_mode=loss)",
                         model, task, ("α=0.1", sweep.get(0.1)), ("α=0", sweep.get(0.0)), column,
                         note="loss reading: under the update reading α = 0 is Hi-ZFO with ZO off, claim 3's test")


def _epochs_trained(row: pd.Series) -> Optional[float]:
    """Epochs a record trained: the config's epochs, or steps / steps-per-epoch when max_steps cut the run."""
    epochs, steps, per_epoch = row.get("epochs"), row.get("steps"), row.get("steps_per_epoch")
    if row.get("max_steps") is None or pd.isna(row.get("max_steps")):
        return float(epochs) if epochs is not None and not pd.isna(epochs) else None
    if steps is not None and per_epoch and not pd.isna(per_epoch):
        return float(steps) / float(per_epoch)
    return None


def cost_claim(arms: list[Arm], model: str, task: str) -> Claim:
    """(8) Hi-ZFO trains faster and with less memory than Full FT: the paper's protocol, and time per epoch."""
    hizfo, full = find_arm(arms, model, task, HIZFO), find_arm(arms, model, task, "full_ft")
    criterion = ("two parts, both needed, each as the paper ran it (its own epochs: Hi-ZFO 3, Full FT 5): the "
                 "paired 95 % CIs of Full FT − Hi-ZFO for train_seconds and for peak_memory_gb lie above 0 (memory "
                 "compared only when both arms measured the same memory kind); contradicted when either lies below 0. "
                 "Time per epoch (train_seconds / epochs trained) is shown beside it, outside the verdict, so the "
                 "share of 'faster' that is the epoch count can be read off")
    text = "(8) Hi-ZFO trains faster and lighter than Full FT"
    if hizfo is None or full is None:
        return Claim("8", text, task, model, criterion, [], NO_RECORDS, _missing(("Hi-ZFO", hizfo),
                                                                               ("Full FT", full)))
    comparisons = [_compare(full, hizfo, "train_seconds", "train s: Full FT − Hi-ZFO (paper protocol)")]
    kinds = {k for arm in (hizfo, full) for k in arm.rows["memory_kind"] if isinstance(k, str)}
    note, rule = "", "single"
    if len(kinds) == 1:
        comparisons.append(_compare(full, hizfo, "mem_gb", f"peak GB ({kinds.pop()}): Full FT − Hi-ZFO"))
    else:
        note, rule = f"memory not compared: kinds {sorted(kinds) or 'none'}", "cost_time_only"
    per_epoch = _compare(full, hizfo, "seconds_per_epoch", "train s per epoch: Full FT − Hi-ZFO (context)")
    if per_epoch is not None and per_epoch.interval.n:
        per_epoch.decides = False
        comparisons.append(per_epoch)
        ratio = [arm.interval(c).mean for arm in (full, hizfo) for c in ("train_seconds", "seconds_per_epoch")]
        if None not in ratio and ratio[2] and ratio[3]:
            note = "; ".join(x for x in (note, f"time ratio Full FT / Hi-ZFO: {ratio[0] / ratio[2]:.2f} as run, "
                                               f"{ratio[1] / ratio[3]:.2f} per epoch") if x)
    claim = Claim("8", text, task, model, criterion, comparisons, INCONCLUSIVE, note, rule=rule)
    claim.verdict = decide(claim)
    return claim


def adjust_for_multiplicity(claims: list[Claim]) -> None:
    """Holm-adjust the deciding comparisons of each (model, task) as one family; set the Holm verdicts."""
    for key in sorted({(c.model, c.task) for c in claims}):
        these = [c for c in claims if (c.model, c.task) == key]
        family = [cmp for c in these for cmp in c.comparisons if cmp.decides and cmp.p is not None]
        for cmp, p in zip(family, holm([cmp.p for cmp in family])):
            cmp.p_holm = p
        for c in these:
            c.family_size = len(family)
            for cmp in c.comparisons:
                cmp.holm_verdict = cmp.verdict_at(cmp.p_holm)
            c.holm_verdict = decide(c, holm_adjusted=True)


def study_claims(arms: list[Arm], frame: pd.DataFrame, margin: float = DEFAULT_MARGIN) -> list[Claim]:
    """Every claim, for every (model, task) that has records (``frame``: load_study's rows, for the metric keys)."""
    claims: list[Claim] = []
    for model, task in sorted({(a.model, a.task) for a in arms}):
        column = f"metric.{task_metrics(task, frame)[0]}"
        get = lambda method: find_arm(arms, model, task, method)  # noqa: E731
        hizfo = ("Hi-ZFO", get(HIZFO))
        claims += [
            _simple_claim("1", "(1) pure ZO (MeZO) is poor on generative tasks: Full FT beats MeZO", model, task,
                          ("Full FT", get("full_ft")), ("MeZO", get("mezo")), column),
            _simple_claim("2", "(2) Hi-ZFO beats Full FT", model, task, hizfo, ("Full FT", get("full_ft")), column),
            _simple_claim("3", "(3) the ZO part helps: Hi-ZFO beats Hi-ZFO with ZO off (α scales the ZO update, so the "
                          "control differs in the ZO update alone)", model, task, hizfo,
                          ("ZO off", get("hizfo_zo_off")), column),
            _simple_claim("4", "(4) the ZO estimate beats a random direction of the same size", model, task, hizfo,
                          ("random dir.", get("hizfo_random_dir")), column),
            alpha_claim(arms, model, task, column),
            rho_claim(arms, model, task, column),
            lr_ratio_claim(arms, model, task, column, margin),
            cost_claim(arms, model, task),
        ]
    adjust_for_multiplicity(claims)
    return sorted(claims, key=lambda c: (c.number, c.task, c.model))


# -- Markdown --------------------------------------------------------------------------------------------------
def _md_row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def arm_table(arms: list[Arm], metrics: tuple[str, ...]) -> list[str]:
    """Markdown rows: one arm each, mean ± 95 % CI half-width over seeds, n, train time and peak memory."""
    lines = [_md_row(["method", "variant", "n", *metrics, f"seed s.d. {metrics[0]}", "train s", "s / epoch",
                      "peak GB", "memory kind"]),
             _md_row(["---"] * (len(metrics) + 8))]
    for arm in arms:
        kinds = sorted({k for k in arm.rows["memory_kind"] if isinstance(k, str)})
        sd = arm.interval(f"metric.{metrics[0]}").sd
        lines.append(_md_row([METHOD_DISPLAY.get(arm.method, arm.method), arm.variant, len(arm.seeds),
                              *(arm.interval(f"metric.{m}").show(decimals(m)) for m in metrics),
                              "–" if sd is None else f"{sd:.{decimals(metrics[0])}f}",
                              arm.interval("train_seconds").show(1), arm.interval("seconds_per_epoch").show(1),
                              arm.interval("mem_gb").show(2), ", ".join(kinds) or "–"]))
    return lines


PAIRS = (("Hi-ZFO − Full FT", HIZFO, "default", "full_ft", "default"),
         ("Hi-ZFO − Hi-ZFO ZO off", HIZFO, "default", "hizfo_zo_off", "default"),
         ("Hi-ZFO − Hi-ZFO random dir.", HIZFO, "default", "hizfo_random_dir", "default"))


def pair_rows(arms: list[Arm], model: str, task: str, metrics: tuple[str, ...]) -> list[str]:
    """Markdown rows of the paired differences the issue asks for."""
    wanted = [(name, find_arm(arms, model, task, a, va), find_arm(arms, model, task, b, vb))
              for name, a, va, b, vb in PAIRS]
    for method in HIZFO_READINGS:
        sweep = sweep_arms(arms, model, task, method, "alpha")
        if sweep or method == HIZFO:
            wanted.append((f"α=0.1 − α=0 ({METHOD_DISPLAY.get(method, method)})", sweep.get(0.1), sweep.get(0.0)))
    columns = [f"metric.{m}" for m in metrics] + ["train_seconds", "mem_gb"]
    lines = [_md_row(["comparison", "n pairs", *metrics, "train s", "peak GB"]), _md_row(["---"] * (len(columns) + 2))]
    for name, a, b in wanted:
        if a is None or b is None:
            lines.append(_md_row([name, 0, *(["no records"] * len(columns))]))
            continue
        cells = []
        for column in columns:
            places = decimals(column[len("metric."):]) if column.startswith("metric.") else 1 if "seconds" in column else 2
            cells.append(paired(a, b, column)[0].show_ci(places))
        lines.append(_md_row([name, len(paired(a, b, columns[0])[1]), *cells]))
    return lines


def render_report(arms: list[Arm], shared: dict, notes: list[str], frame: pd.DataFrame) -> str:
    lines = ["# Study report", "",
             "Mean ± 95 % t-interval half-width over seeds (t_{0.975, n-1} · s/√n); `–` where an arm has one seed "
             "(no interval can be given). *Seed s.d.* is the s.d. over an arm's seeds of the claims' metric: the "
             "noise floor. Paired differences are over the seeds both arms have: mean [95 % CI]; claims.md adds "
             "p values, Holm's adjustment and the smallest detectable difference.", ""]
    for model, task in sorted({(a.model, a.task) for a in arms}):
        metrics = task_metrics(task, frame)
        these = [a for a in arms if (a.model, a.task) == (model, task)]
        lines += [f"## {TASK_DISPLAY.get(task, task)} ({model})", ""]
        if shared.get((model, task)):
            lines += [f"Settings every record of this task shares: `{', '.join(shared[(model, task)])}`.", ""]
        lines += arm_table(these, metrics) + [""]
        single = [a.label for a in these if len(a.seeds) < 2]
        if single:
            lines += [f"Note: {', '.join(single)}: one seed, so no interval (`–`).", ""]
        lines += ["Paired differences (same seeds):", ""] + pair_rows(arms, model, task, metrics) + [""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def _p(value: Optional[float]) -> str:
    return "–" if value is None else "<0.001" if value < 0.001 else f"{value:.3f}"


def _comparison_cell(c: Comparison) -> str:
    metric = c.column.replace("metric.", "")
    places = decimals(metric) if c.column.startswith("metric.") else 1 if "seconds" in c.column else 2
    level = "90 % CI" if c.kind == "equivalence" else "95 % CI"
    shown = "–" if c.min_detectable is None else f"{c.min_detectable:.{places}f}"
    detect = "" if c.kind == "equivalence" else f", detectable ≥ {shown}"
    head = f"{c.what} ({metric}): {c.interval.show_ci(places)} {level}, n={len(c.seeds)}, p={_p(c.p)}"
    if not c.decides:
        return f"{head}{detect} → {c.verdict} (context: outside the verdict and Holm's family)"
    return f"{head}, p_Holm={_p(c.p_holm)}{detect} → {c.verdict} / Holm {c.holm_verdict}"


def render_claims(claims: list[Claim], margin: float) -> str:
    families = sorted({(c.model, c.task, c.family_size) for c in claims})
    sizes = "; ".join(f"{TASK_DISPLAY.get(t, t)} ({m}): {k}" for m, t, k in families)
    lines = ["# The paper's claims on this study", "",
             "Each verdict comes from paired differences over seeds (same seed in both arms), oriented so that a "
             "positive difference is the paper's direction: *supported* when the 95 % t interval lies above 0 "
             "(two-sided paired t test, p < 0.05), *contradicted* when it lies below 0, *inconclusive* otherwise, "
             "including fewer than two paired seeds and missing arms (*inconclusive (no records)*). Scores are each "
             "task's first metric (ROUGE-1 ×100 for pydoc, pass@1 for humaneval_split, exact match % for "
             "wordnet_revdict).", "",
             f"Multiplicity: the comparisons behind the verdicts of one task are one family, Holm-adjusted "
             f"(step-down, family-wise 5 %); the verdict with Holm's p values is beside the raw one. Comparisons "
             f"per family: {sizes or 'none'}.", "",
             f"Detectable: the smallest true difference the achieved seeds would find with {POWER:.0%} power in the "
             f"same two-sided 5 % paired t test (unadjusted), given the observed s.d. of the differences "
             f"(noncentral t). A difference smaller than that is not ruled out by an inconclusive verdict.", "",
             f"Claim 5 is tested in the loss reading (alpha_mode=loss, α 0.1 against α 0): under the update "
             f"reading α = 0 is Hi-ZFO with ZO off, which claim 3 tests. Claim 7's stability is an equivalence test "
             f"(TOST at 90 %) with the margin δ = {margin:g} × the r = 0.1 mean, fixed before the study ran.", "",
             _md_row(["claim", "task", "comparisons: mean [CI] n, p, p_Holm, detectable", "verdict", "Holm verdict",
                      "note"]),
             _md_row(["---"] * 6)]
    for claim in claims:
        shown = "<br>".join(_comparison_cell(c) for c in claim.comparisons) or "–"
        lines.append(_md_row([claim.text, f"{TASK_DISPLAY.get(claim.task, claim.task)} ({claim.model})", shown,
                              f"**{claim.verdict}**", f"**{claim.holm_verdict}**", claim.note or ""]))
    lines += ["", "## Criteria", ""]
    seen = set()
    for claim in claims:
        if claim.text not in seen:
            seen.add(claim.text)
            lines.append(f"- {claim.text}: {claim.criterion}.")
    return "\n".join(lines) + "\n"


# -- plots -----------------------------------------------------------------------------------------------------
def read_curves(frame: pd.DataFrame) -> dict[str, dict]:
    """path -> record["curve"] for the records that have one."""
    curves = {}
    for path in frame["path"]:
        try:
            curve = json.loads(Path(path).read_text()).get("curve")
        except (OSError, ValueError):
            continue
        if isinstance(curve, dict) and curve.get("train_loss"):
            curves[path] = curve
    return curves


def _band(series: list[dict[float, float]]) -> tuple[list[float], list[float], list[float], list[float]]:
    """x, mean, low, high over the seeds' curves at the x every seed has (low = high = mean for one seed)."""
    xs = sorted(set.intersection(*(set(s) for s in series))) if series else []
    mean, low, high = [], [], []
    for x in xs:
        iv = t_interval([s[x] for s in series])
        mean.append(iv.mean)
        low.append(iv.lo if iv.lo is not None else iv.mean)
        high.append(iv.hi if iv.hi is not None else iv.mean)
    return xs, mean, low, high


def plot_curves(arms: list[Arm], curves: dict[str, dict], metric: str, out: Path, stem: str,
                notes: list[str]) -> list[Path]:
    """Learning curves against the step, mean over seeds with its 95 % band, one line per arm: the training loss,
    the epoch-end evaluation loss, and the epoch-end ``metric`` where the records hold it (hizfo.run.records.Curve)."""
    def eval_series(path: str, key: str) -> dict[float, float]:
        points = {}
        for entry in curves[path].get("eval") or []:
            value = entry.get(key) if key == "eval_loss" else (entry.get("metrics") or {}).get(key)
            if value is not None:
                points[float(entry["step"])] = float(value)
        return points

    def draw(ax, series: list[dict[float, float]], colour, label: Optional[str] = None, marker: Optional[str] = None):
        xs, mean, low, high = _band(series)
        ax.plot(xs, mean, color=colour, label=label, marker=marker)
        ax.fill_between(xs, low, high, color=colour, alpha=0.2, linewidth=0)

    with_curve = {a.label: [p for p in a.rows["path"] if p in curves] for a in arms}
    missing = [f"{a.label} ({len(a.rows) - len(with_curve[a.label])} of {len(a.rows)})" for a in arms
               if len(with_curve[a.label]) < len(a.rows)]
    if missing:
        notes.append(f"{stem}: records without a curve (record['curve']) left out: {', '.join(missing)}")
    drawn = [a for a in arms if with_curve[a.label]]
    if not drawn:
        return []
    panels = [("train loss", None), ("eval loss (teacher-forced)", "eval_loss")]
    if any(eval_series(p, metric) for a in drawn for p in with_curve[a.label]):
        panels.append((f"eval {metric}", metric))
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), constrained_layout=True)
    colours = plt.get_cmap("tab10" if len(drawn) <= 10 else "tab20").colors
    for index, arm in enumerate(drawn):
        paths, colour = with_curve[arm.label], colours[index % len(colours)]
        draw(axes[0], [{float(s): float(v) for s, v in curves[p]["train_loss"]} for p in paths], colour,
             label=f"{arm.label} (n={len(paths)})")
        for ax, (_, key) in zip(axes[1:], panels[1:]):
            series = [eval_series(p, key) for p in paths]
            if all(series):
                draw(ax, series, colour, marker="o")
    for ax, (title, key) in zip(axes, panels):
        ax.set(xlabel="step", ylabel=title, title=f"{title}{'' if key is None else ' at epoch ends'}")
    figure.suptitle("mean over seeds, 95 % band")
    figure.legend(loc="outside right upper", fontsize="small", frameon=False)
    return save_figure(figure, out, stem)


def plot_scores(arms: list[Arm], metric: str, out: Path, stem: str) -> list[Path]:
    """Each arm's mean score with its 95 % interval (a bare point where an arm has one seed)."""
    column = f"metric.{metric}"
    shown = [(a, a.interval(column)) for a in arms if a.interval(column).mean is not None]
    if not shown:
        return []
    figure, ax = plt.subplots(figsize=(7, 0.35 * len(shown) + 1.2), constrained_layout=True)
    for y, (arm, iv) in enumerate(shown):
        err = None if iv.half is None else [[iv.half], [iv.half]]
        ax.errorbar([iv.mean], [y], xerr=err, fmt="o" if err else "x", color="C0" if err else "C3", capsize=3)
    ax.set_yticks(range(len(shown)), [f"{a.label} (n={iv.n})" for a, iv in shown])
    ax.invert_yaxis()
    ax.set(xlabel=f"{metric} (mean ± 95 % CI; × = one seed, no interval)", title=f"{shown[0][0].task}: arms")
    return save_figure(figure, out, stem)


def plot_sweeps(arms: list[Arm], model: str, task: str, metric: str, out: Path, stem: str) -> list[Path]:
    """Mean ± 95 % CI against ρ, r and α, one line per reading of α."""
    column = f"metric.{metric}"
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
    drawn = False
    for ax, name in zip(axes, SWEEP_KEYS):
        any_line = False
        for method in HIZFO_READINGS:
            sweep = sweep_arms(arms, model, task, method, name)
            if len(sweep) < 2:
                continue
            ivs = [sweep[x].interval(column) for x in sweep]
            xs = [x for x, iv in zip(sweep, ivs) if iv.mean is not None]
            ys = [iv.mean for iv in ivs if iv.mean is not None]
            err = [iv.half or 0.0 for iv in ivs if iv.mean is not None]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=METHOD_DISPLAY.get(method, method))
            any_line = drawn = True
        ax.set(xlabel=SWEEP_SYMBOLS[name], ylabel=f"{metric} (mean ± 95 % CI)")
        if any_line:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no sweep records", ha="center", va="center", transform=ax.transAxes)
    if not drawn:
        plt.close(figure)
        return []
    figure.suptitle(f"{task}: sweeps")
    return save_figure(figure, out, stem)


# -- the whole study -------------------------------------------------------------------------------------------
def run_study(results_dir: str | Path, out: str | Path, margin: float = DEFAULT_MARGIN,
              report: Optional[Report] = None) -> dict[str, Any]:
    """Read the records, write report.md, claims.md, study.json and the plots; returns what study.json holds."""
    report = report or Report()
    frame, shared = load_study(results_dir, report)
    if frame.empty:
        return {}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arms = arms_of(frame)
    claims = study_claims(arms, frame, margin)
    notes: list[str] = []
    curves = read_curves(frame)
    plots: list[Path] = []
    for model, task in sorted({(a.model, a.task) for a in arms}):
        these = [a for a in arms if (a.model, a.task) == (model, task)]
        metric = task_metrics(task, frame)[0]
        slug = re.sub(r"[^A-Za-z0-9._=-]+", "_", f"{task}_{model}").strip("_")
        plots += plot_curves([a for a in these if a.variant == "default"], curves, metric, out, f"curves_{slug}", notes)
        plots += plot_curves([a for a in these if a.variant != "default"], curves, metric, out,
                             f"curves_variants_{slug}", notes)
        plots += plot_scores(these, metric, out, f"scores_{slug}")
        plots += plot_sweeps(these, model, task, metric, out, f"sweeps_{slug}")
    all_notes = report.notes + report.warnings + notes
    (out / "report.md").write_text(render_report(arms, shared, all_notes, frame))
    (out / "claims.md").write_text(render_claims(claims, margin))
    summary = {
        "arms": [{"model": a.model, "task": a.task, "method": a.method, "variant": a.variant, "seeds": a.seeds,
                  "metrics": {m: asdict(a.interval(f"metric.{m}")) for m in task_metrics(a.task, frame)},
                  "train_seconds": asdict(a.interval("train_seconds")),
                  "seconds_per_epoch": asdict(a.interval("seconds_per_epoch")),
                  "peak_memory_gb": asdict(a.interval("mem_gb")),
                  "memory_kind": sorted({k for k in a.rows["memory_kind"] if isinstance(k, str)})} for a in arms],
        "claims": [asdict(c) for c in claims],
        "shared_settings": {f"{m}/{t}": v for (m, t), v in shared.items()},
        "notes": all_notes, "plots": [str(p) for p in plots], "margin": margin,
        "tests": {"alpha": ALPHA, "power": POWER, "equivalence_confidence": EQUIVALENCE_CONFIDENCE,
                  "multiplicity": "Holm, per (model, task)"},
    }
    (out / "study.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True, help="a results directory (records, any depth)")
    parser.add_argument("--out", type=Path, required=True, help="where report.md, claims.md and the plots go")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                        help="claim 7's equivalence margin, a fraction of the r = 0.1 mean (default 0.05)")
    args = parser.parse_args(argv)
    if args.margin < 0:
        print(f"error: --margin: must be >= 0, got {args.margin}", file=sys.stderr)
        return 2
    summary = run_study(args.results, args.out, args.margin)
    if not summary:
        print(f"error: no ok record under {args.results}", file=sys.stderr)
        return 1
    print(f"{len(summary['arms'])} arms, {len(summary['claims'])} claim rows: {args.out / 'report.md'}, "
          f"{args.out / 'claims.md'}, {args.out / 'study.json'}, {len(summary['plots'])} plot files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
