"""The real-model study (issue 12): arms with 95 % t intervals over seeds, paired differences, the paper's claims
checked one by one, and plots.

    python -m analysis.study --results results/smollm2 --out results/smollm2/report [--margin 0.05]

Reads only the records under ``--results`` (analysis.loading; status ``ok`` only) and writes to ``--out``:
``report.md`` (a table of arms per task and the paired differences), ``claims.md`` (one row per claim of the
paper, with its numbers, its verdict and the criterion behind it), ``study.json`` (the same numbers), and PNG + PDF
plots: learning curves, the arms' scores, and the ρ / r / α sweeps.

An *arm* is (model, task, method, variant). The method is analysis.specs.method_label's (``hizfo`` with
``alpha_mode=loss`` shows as ``hizfo_alpha_loss``, so the two readings of α never mix). The variant is the record's
``config["variant"]``, split into key=value pairs (analysis.loading.split_variant) and cleaned so that the same
computation gets the same name: ``method.alpha_mode`` is left out (it is in the method's name); so are keys that
only say where data or weights come from (``model.path``, ``task.data_dir``, ``task.allow_code_execution``, ...);
so are pairs that every record of the task shares (the study's common settings, listed in the report); and so is
a swept hyperparameter (ρ, α, r) set to the value the arm's method has when that key is not overridden (read
from those records' own ``config["method"]``). What is left is the arm's variant, ``default`` when nothing is.

Intervals are Student-t: mean ± t_{0.975, n-1} · s / √n over seeds (scipy.stats.t), and over the per-seed
differences of two arms for a paired difference (seeds present in both arms). Fewer than two values give no
interval ("–"); a verdict then says inconclusive.
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

from analysis.loading import Report, load_records, split_variant  # noqa: E402
from analysis.specs import METHOD_DISPLAY, TASK_DISPLAY, TASK_SCORES  # noqa: E402
from analysis.sweeps import save_figure  # noqa: E402

CONFIDENCE = 0.95
DEFAULT_MARGIN = 0.05            # claim 7's equivalence margin, as a fraction of the r = 0.1 arm's mean score
# metric keys per task, the first is the one claims use (hizfo/tasks/pydoc.py, hizfo/tasks/humaneval.py score())
TASK_METRICS: dict[str, tuple[str, ...]] = {"pydoc": ("rouge1", "rouge2", "rougeL"), "humaneval_split": ("pass@1",)}
METRIC_DECIMALS = {"pass@1": 3, "accuracy": 3}
# variant keys that do not change what a run computes, or that the method's name already carries
IGNORED_KEYS = ("method.alpha_mode", "model.path", "model.device_map", "task.data_dir", "task.allow_code_execution")
IGNORED_PREFIXES = ("task.data_files",)
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
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * np.std(data, ddof=1) / math.sqrt(n))
    return Interval(n, mean, mean - half, mean + half)


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
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES)


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
    pairs = [[(k, v) for k, v in split_variant(variant) if not _ignored(k)] for variant in frame["variant"]]
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
    return ok.drop_duplicates(keys, keep="last").reset_index(drop=True), shared


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
        keys = [key for key, _ in split_variant(arm.variant)]
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
    """One paired comparison inside a claim: ``better − worse`` in the paper's direction."""
    what: str
    column: str
    interval: Interval
    seeds: list[int]
    verdict: str
    note: str = ""


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


def _compare(better: Optional[Arm], worse: Optional[Arm], column: str, what: str) -> Optional[Comparison]:
    if better is None or worse is None:
        return None
    interval, seeds = paired(better, worse, column)
    note = "" if interval.n >= 2 else f"{interval.n} paired seed(s): no interval"
    return Comparison(what, column, interval, seeds, verdict(interval), note)


def _missing(*named: tuple[str, Optional[Arm]]) -> str:
    return "no records for " + ", ".join(name for name, arm in named if arm is None)


def _simple_claim(number: str, text: str, model: str, task: str, better: tuple[str, Optional[Arm]],
                  worse: tuple[str, Optional[Arm]], column: str) -> Claim:
    criterion = (f"supported when the 95 % CI of the paired difference {better[0]} − {worse[0]} (the task's score, "
                 f"same seeds) lies above 0, contradicted when it lies below 0, otherwise inconclusive")
    comparison = _compare(better[1], worse[1], column, f"{better[0]} − {worse[0]}")
    if comparison is None:
        return Claim(number, text, task, model, criterion, [], NO_RECORDS, _missing(better, worse))
    return Claim(number, text, task, model, criterion, [comparison], comparison.verdict, comparison.note)


def _combine(verdicts: list[str]) -> str:
    if any(v == CONTRADICTED for v in verdicts):
        return CONTRADICTED
    if verdicts and all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    return INCONCLUSIVE


def rho_claim(arms: list[Arm], model: str, task: str, column: str) -> Claim:
    """(6) An inverted U over ρ."""
    criterion = ("with the ρ values the records hold (at least three; the smallest and largest are the ends): "
                 "supported when some interior ρ beats both ends, each by a paired 95 % CI above 0; contradicted "
                 "when one end beats every interior ρ, each by a paired 95 % CI above 0; otherwise inconclusive "
                 "(no correction for the several comparisons)")
    text = "(6) the score is an inverted U over ρ (the FO fraction)"
    sweep = sweep_arms(arms, model, task, HIZFO, "rho")
    if len(sweep) < 3:
        return Claim("6", text, task, model, criterion, [], NO_RECORDS,
                     f"ρ values with records: {', '.join(f'{v:g}' for v in sweep) or 'none'}; need three")
    values = list(sweep)
    ends, interior = (values[0], values[-1]), values[1:-1]
    comparisons, peak, valley = [], False, False
    for middle in interior:                          # interior − each end: SUPPORTED twice is a peak
        found = [_compare(sweep[middle], sweep[end], column, f"ρ={middle:g} − ρ={end:g}") for end in ends]
        comparisons += found
        peak = peak or all(c.verdict == SUPPORTED for c in found)
    for end in ends:                                 # an end above every interior ρ: CONTRADICTED for each
        valley = valley or all(c.verdict == CONTRADICTED for c in comparisons if c.what.endswith(f"ρ={end:g}"))
    result = SUPPORTED if peak and not valley else CONTRADICTED if valley and not peak else INCONCLUSIVE
    return Claim("6", text, task, model, criterion, comparisons, result, f"ρ values: {', '.join(map(str, values))}")


def lr_ratio_claim(arms: list[Arm], model: str, task: str, column: str, margin: float) -> Claim:
    """(7) r stable in [0.1, 0.5], collapse from 0.7."""
    criterion = (f"two parts, both needed. Collapse: for every r ≥ 0.7 in the records, the paired 95 % CI of "
                 f"score(r=0.1) − score(r) lies above 0 (below 0 contradicts). Stability: for every r in (0.1, 0.5], "
                 f"the paired 95 % CI of score(r) − score(r=0.1) lies inside ±δ, δ = {margin:g} × |mean score at "
                 f"r=0.1| (an equivalence test; a CI that merely contains 0 shows nothing, so it stays "
                 f"inconclusive; a CI wholly outside ±δ contradicts). Supported when both parts are; contradicted "
                 f"when either is; otherwise inconclusive")
    text = "(7) r = η_ZO/η_FO is stable in [0.1, 0.5] and collapses at 0.7"
    sweep = sweep_arms(arms, model, task, HIZFO, "lr_ratio")
    base = sweep.get(0.1)
    stable = [v for v in sweep if 0.1 < v <= 0.5]
    high = [v for v in sweep if v >= 0.7]
    if base is None or not stable or not high:
        return Claim("7", text, task, model, criterion, [], NO_RECORDS,
                     f"r values with records: {', '.join(f'{v:g}' for v in sweep) or 'none'}; need 0.1, one in "
                     f"(0.1, 0.5] and one ≥ 0.7")
    comparisons = [_compare(base, sweep[v], column, f"r=0.1 − r={v:g}") for v in high]
    collapse = _combine([c.verdict for c in comparisons])
    base_mean = base.interval(column).mean or 0.0
    delta = margin * abs(base_mean)
    equivalence = []
    for v in stable:
        c = _compare(sweep[v], base, column, f"r={v:g} − r=0.1 (within ±{delta:.3g}?)")
        iv = c.interval
        if iv.lo is None:
            c.verdict = INCONCLUSIVE
        elif -delta <= iv.lo and iv.hi <= delta:
            c.verdict = SUPPORTED
        elif iv.hi < -delta or iv.lo > delta:
            c.verdict = CONTRADICTED
        else:
            c.verdict = INCONCLUSIVE
        c.note = (c.note + "; " if c.note else "") + f"equivalence margin δ = {delta:.3g}"
        equivalence.append(c)
    stability = _combine([c.verdict for c in equivalence])
    result = _combine([collapse, stability])
    return Claim("7", text, task, model, criterion, comparisons + equivalence, result,
                 f"collapse: {collapse}; stability: {stability}")


def alpha_claims(arms: list[Arm], model: str, task: str, column: str) -> list[Claim]:
    """(5) α = 0.1 beats α = 0, for each reading of α that has records."""
    claims = []
    for method in HIZFO_READINGS:
        sweep = sweep_arms(arms, model, task, method, "alpha")
        if not sweep and method != HIZFO:
            continue
        reading = "α scales the ZO update" if method == HIZFO else "α weights the ZO loss"
        claims.append(_simple_claim("5", f"(5) α = 0.1 beats α = 0 ({reading}; {METHOD_DISPLAY.get(method, method)})",
                                    model, task, ("α=0.1", sweep.get(0.1)), ("α=0", sweep.get(0.0)), column))
    return claims


def cost_claim(arms: list[Arm], model: str, task: str) -> Claim:
    """(8) Hi-ZFO trains faster and with less memory than Full FT."""
    hizfo, full = find_arm(arms, model, task, HIZFO), find_arm(arms, model, task, "full_ft")
    criterion = ("two parts, both needed: the paired 95 % CIs of Full FT − Hi-ZFO for train_seconds and for "
                 "peak_memory_gb lie above 0 (memory compared only when both arms measured the same memory kind); "
                 "contradicted when either lies below 0")
    text = "(8) Hi-ZFO trains faster and lighter than Full FT"
    if hizfo is None or full is None:
        return Claim("8", text, task, model, criterion, [], NO_RECORDS, _missing(("Hi-ZFO", hizfo),
                                                                               ("Full FT", full)))
    comparisons = [_compare(full, hizfo, "train_seconds", "train s: Full FT − Hi-ZFO")]
    kinds = {k for arm in (hizfo, full) for k in arm.rows["memory_kind"] if isinstance(k, str)}
    note = ""
    if len(kinds) == 1:
        comparisons.append(_compare(full, hizfo, "mem_gb", f"peak GB ({kinds.pop()}): Full FT − Hi-ZFO"))
        result = _combine([c.verdict for c in comparisons])
    else:
        note = f"memory not compared: kinds {sorted(kinds) or 'none'}"
        result = CONTRADICTED if comparisons[0].verdict == CONTRADICTED else INCONCLUSIVE
    return Claim("8", text, task, model, criterion, comparisons, result, note)


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
            *alpha_claims(arms, model, task, column),
            rho_claim(arms, model, task, column),
            lr_ratio_claim(arms, model, task, column, margin),
            cost_claim(arms, model, task),
        ]
    return sorted(claims, key=lambda c: (c.number, c.task, c.model))        # stable: readings of α keep their order


# -- Markdown --------------------------------------------------------------------------------------------------
def _md_row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def arm_table(arms: list[Arm], metrics: tuple[str, ...]) -> list[str]:
    """Markdown rows: one arm each, mean ± 95 % CI half-width over seeds, n, train time and peak memory."""
    lines = [_md_row(["method", "variant", "n", *metrics, "train s", "peak GB", "memory kind"]),
             _md_row(["---"] * (len(metrics) + 6))]
    for arm in arms:
        kinds = sorted({k for k in arm.rows["memory_kind"] if isinstance(k, str)})
        lines.append(_md_row([METHOD_DISPLAY.get(arm.method, arm.method), arm.variant, len(arm.seeds),
                              *(arm.interval(f"metric.{m}").show(decimals(m)) for m in metrics),
                              arm.interval("train_seconds").show(1), arm.interval("mem_gb").show(2),
                              ", ".join(kinds) or "–"]))
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
             "(no interval can be given). Paired differences are over the seeds both arms have: mean [95 % CI].", ""]
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


def render_claims(claims: list[Claim], margin: float) -> str:
    lines = ["# The paper's claims on this study", "",
             "Each verdict comes from paired differences over seeds (same seed in both arms), oriented so that a "
             "positive difference is the paper's direction: *supported* when the 95 % t interval lies above 0, "
             "*contradicted* when it lies below 0, *inconclusive* otherwise, including fewer than two paired seeds "
             "and missing arms (*inconclusive (no records)*). Scores are each task's first metric (ROUGE-1 ×100 for "
             f"pydoc, pass@1 for humaneval_split). Claim 7's equivalence margin is {margin:g} × the r = 0.1 mean.",
             "", _md_row(["claim", "task", "comparison: mean [95 % CI] (n pairs)", "verdict", "note"]),
             _md_row(["---"] * 5)]
    for claim in claims:
        shown = "<br>".join(f"{c.what} ({c.column.replace('metric.', '')}): "
                            f"{c.interval.show_ci(decimals(c.column.replace('metric.', '')))} (n={len(c.seeds)})"
                            + (f" → {c.verdict}" if len(claim.comparisons) > 1 else "")
                            for c in claim.comparisons) or "–"
        lines.append(_md_row([claim.text, f"{TASK_DISPLAY.get(claim.task, claim.task)} ({claim.model})", shown,
                              f"**{claim.verdict}**", claim.note or ""]))
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
    the epoch-end evaluation loss, and the epoch-end ``metric`` where the records hold it (hizfo.records.Curve)."""
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
                  "train_seconds": asdict(a.interval("train_seconds")), "peak_memory_gb": asdict(a.interval("mem_gb")),
                  "memory_kind": sorted({k for k in a.rows["memory_kind"] if isinstance(k, str)})} for a in arms],
        "claims": [asdict(c) for c in claims],
        "shared_settings": {f"{m}/{t}": v for (m, t), v in shared.items()},
        "notes": all_notes, "plots": [str(p) for p in plots], "margin": margin,
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
