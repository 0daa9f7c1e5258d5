"""The paper's eight claims checked on the study's arms: each claim's paired comparisons, its verdict by a stated
criterion, and Holm's adjustment over each (model, task)'s comparisons (analysis.study.stats for the tests)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pandas as pd

from analysis.study.arms import HIZFO, Arm, find_arm, sweep_arms, task_metrics
from analysis.study.stats import (ALPHA, CONTRADICTED, EQUIVALENCE_CONFIDENCE, INCONCLUSIVE, SUPPORTED, Interval,
                                  difference_interval, holm, min_detectable, t_test_p, tost)

NO_RECORDS = "inconclusive (no records)"


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


def _equal_note(interval: Interval) -> str:
    if interval.n < 2 or interval.sd != 0:
        return ""
    return f"all {interval.n} paired differences equal (s = 0): no t interval; p from the exact sign-flip test"


def _compare(better: Optional[Arm], worse: Optional[Arm], column: str, what: str) -> Optional[Comparison]:
    """A paired difference: 95 % CI, two-sided p, the smallest detectable difference."""
    if better is None or worse is None:
        return None
    va, vb = better.values(column), worse.values(column)
    seeds = sorted(set(va) & set(vb))
    diffs = [va[s] - vb[s] for s in seeds]
    interval = difference_interval(diffs)
    p = t_test_p(diffs)
    significant = INCONCLUSIVE if interval.mean is None else SUPPORTED if interval.mean > 0 else CONTRADICTED
    note = _equal_note(interval) or ("" if interval.n >= 2 else f"{interval.n} paired seed(s): no interval")
    comparison = Comparison(what, column, interval, seeds, INCONCLUSIVE, note, p=p, significant=significant,
                            min_detectable=min_detectable(interval.n, interval.sd))
    comparison.verdict = comparison.verdict_at(p)
    return comparison


def _equivalent(a: Arm, b: Arm, column: str, what: str, delta: float) -> Comparison:
    """TOST of a − b against ±δ: the 90 % CI, and the p of whichever of equivalence / non-equivalence is smaller."""
    va, vb = a.values(column), b.values(column)
    seeds = sorted(set(va) & set(vb))
    diffs = [va[s] - vb[s] for s in seeds]
    interval = difference_interval(diffs, EQUIVALENCE_CONFIDENCE)
    p_eq, p_ne = tost(diffs, delta)
    note = f"equivalence margin δ = {delta:.3g}" + ("" if interval.n >= 2 else f"; {interval.n} paired seed(s)")
    note = "; ".join(x for x in (note, _equal_note(interval)) if x)
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



def cost_claim(arms: list[Arm], model: str, task: str) -> Claim:
    """(8) Hi-ZFO trains faster and with less memory than Full FT: the paper's protocol, and time per epoch."""
    hizfo, full = find_arm(arms, model, task, HIZFO), find_arm(arms, model, task, "full_ft")
    criterion = ("two parts, both needed, each as the paper ran it (its own epochs: Hi-ZFO 3, Full FT 5): the "
                 "paired 95 % CIs of Full FT − Hi-ZFO for train_seconds and for peak_memory_gb lie above 0 (memory "
                 "compared only when both arms measured the same memory kind); contradicted when either lies below 0. "
                 "Time per epoch (train_seconds / epochs trained) is shown beside it, outside the verdict, as a "
                 "difference with its 95 % CI only: no equivalence test or margin was set for it, so a CI that "
                 "contains 0 does not show the per-epoch times equal, only that no difference was detected")
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


def study_claims(arms: list[Arm], frame: pd.DataFrame, margin: float) -> list[Claim]:
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

