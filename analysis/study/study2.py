"""The second CPU study's claims: each pre-registered comparison (analysis/study/study2_spec.py COMPARISONS) decided
by its pre-registered test (analysis/study/prereg.py), Holm per task, and claims.md.

    python -m analysis.study --results results/smollm2_cpu_study2/runs --out results/smollm2_cpu_study2/report

(the driver writes this claims.md in place of study 1's wherever the records are experiment=smollm2_study2_cpu).

An arm's runs are the ok records whose task, method and variant are the arm's (ArmSpec.variant is the arm file's
``variant``). A comparison pairs the seeds both arms have **on the same CPU model** (provenance ``cpu_model``); a
seed whose two runs name different CPU models is left out and said so. Scores are per evaluation example, from each
run's predictions file (prereg.example_scores); time, memory and seconds per epoch are one value a run.

How a claim's verdict follows from its comparisons (fixed with this file, before the study's first record): a claim
row is (claim, task, ZO reading, part); it is *contradicted* when any of its comparisons is, *supported* when all
are, *inconclusive* otherwise (study 1's rule). Claim 8 has two parts: *as run* (training seconds and peak memory,
the paper's protocol: 3 epochs against 5; both needed, memory only where both arms measured the same kind) and *per
epoch* (the equivalence within ±δ: "supported" there reads "no per-epoch difference beyond ±10 %", i.e. all of the
speed-up is the epoch count). Claim 7 needs the collapse at r = 0.7 and both stability equivalences.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

import pandas as pd

from analysis.specs import TASK_DISPLAY
from analysis.study.prereg import (PER_EPOCH_MARGIN, PERMUTATIONS, STABILITY_MARGIN, SeedLevel, cost_test,
                                   example_equivalence, example_scores, example_test, holm_verdicts,
                                   seed_equivalence, seed_level)
from analysis.study.stats import CONTRADICTED, INCONCLUSIVE, SUPPORTED
from analysis.study.study2_spec import ARMS, COMPARISONS, PRESET, ArmSpec, ComparisonSpec
from hizfo.run.runspec import predictions_path

NO_RECORDS = "inconclusive (no records)"
CLAIM_TEXT = {
    "1": "pure ZO (MeZO) is poor: Full FT beats MeZO",
    "2": "Hi-ZFO beats Full FT",
    "3": "the ZO part helps: Hi-ZFO beats Hi-ZFO with ZO off",
    "4": "the ZO estimate beats a random direction of the same size",
    "7": "r = η_ZO/η_FO: large r collapses (0.7 worse than 0.1), small r is stable (0.3, 0.5 equivalent to 0.1)",
    "8": "Hi-ZFO trains faster and lighter than Full FT",
}
MEASURE_COLUMN = {"train_seconds": "train_seconds", "peak_memory_gb": "mem_gb", "seconds_per_epoch": "seconds_per_epoch"}


@dataclass(frozen=True)
class Outcome:
    """One comparison's result: paired seeds, mean difference (better − worse), the deciding test, its p, verdicts."""
    spec: ComparisonSpec
    seeds: tuple[int, ...]
    mean: Optional[float]
    test: str
    p: Optional[float]
    verdict: str
    holm: str = INCONCLUSIVE
    seed_level: Optional[SeedLevel] = None
    delta: Optional[float] = None
    examples: int = 0
    note: str = ""

    @property
    def part(self) -> str:
        return "per epoch" if self.spec.measure == "seconds_per_epoch" else "as run" if self.spec.claim == "8" else ""


def is_study2(frame: pd.DataFrame) -> bool:
    return "experiment" in frame.columns and PRESET in set(frame["experiment"].dropna())


def arm_rows(frame: pd.DataFrame, arm: ArmSpec) -> dict[int, pd.Series]:
    """seed -> the arm's ok record row (load_study's frame: one row per arm and seed)."""
    mine = frame[(frame["task"] == arm.task) & (frame["method"] == arm.method) & (frame["variant"] == arm.variant)]
    return {int(row["seed"]): row for _, row in mine.iterrows()}


def _cpu(row: pd.Series) -> Optional[str]:
    provenance = row.get("provenance")
    return provenance.get("cpu_model") if isinstance(provenance, dict) else None


def paired_seeds(a: dict[int, pd.Series], b: dict[int, pd.Series]) -> tuple[list[int], list[str]]:
    """The seeds both arms ran on one CPU model, and a note for each seed left out because the models differ."""
    seeds, notes = [], []
    for seed in sorted(set(a) & set(b)):
        if _cpu(a[seed]) != _cpu(b[seed]):
            notes.append(f"seed {seed} left out: CPU models differ ({_cpu(a[seed])} / {_cpu(b[seed])})")
        else:
            seeds.append(seed)
    return seeds, notes


def _scores(rows: dict[int, pd.Series], seeds: list[int], task: str) -> dict[int, list[float]]:
    return {s: example_scores(predictions_path(rows[s]["path"]), task) for s in seeds}


def _value(row: pd.Series, column: str) -> Optional[float]:
    value = row.get(column)
    return None if value is None or pd.isna(value) else float(value)


def _arm_mean(rows: dict[int, pd.Series], column: str) -> Optional[float]:
    values = [v for v in (_value(r, column) for r in rows.values()) if v is not None]
    return sum(values) / len(values) if values else None


def _score_outcome(spec: ComparisonSpec, a: dict, b: dict, seeds: list[int], metric: str) -> Outcome:
    """A score comparison: the example-level sign-flip test (a difference) or bootstrap TOST (claim 7's
    stability), with the seed-level t interval, t p and sign-flip p beside it."""
    try:
        left, right = _scores(a, seeds, spec.task), _scores(b, seeds, spec.task)
    except FileNotFoundError as missing:
        return Outcome(spec, tuple(seeds), None, "–", None, INCONCLUSIVE, note=f"no predictions file: {missing}")
    column = f"metric.{metric}"
    level = seed_level([_value(a[s], column) - _value(b[s], column) for s in seeds])
    examples = sum(len(v) for v in left.values())
    if spec.kind == "equivalence":
        base = _arm_mean(b, column)
        delta = STABILITY_MARGIN * base if base else 0.0
        tost = example_equivalence(left, right, delta)
        return Outcome(spec, tuple(seeds), tost.mean, f"example bootstrap TOST, δ = {delta:.3g}", tost.p,
                       tost.verdict, seed_level=level, delta=delta, examples=examples)
    test = example_test(left, right)
    name = ("example sign-flip = exact McNemar" if test.exact and set(map(float, _flat(left, right))) <= {0.0, 100.0}
            else "example sign-flip, exact" if test.exact else f"example sign-flip, {PERMUTATIONS:,} draws")
    note = f"discordant {test.favour} : {test.against}" if test.exact else ""
    return Outcome(spec, tuple(seeds), test.mean, name, test.p, test.verdict, seed_level=level,
                   examples=test.pairs, note=note)


def _flat(*scores: dict[int, list[float]]) -> list[float]:
    return [v for s in scores for values in s.values() for v in values]


def _cost_outcome(spec: ComparisonSpec, a: dict, b: dict, seeds: list[int]) -> Outcome:
    """Claim 8: time or memory by the seed-level paired t test; seconds per epoch by the seed-level t TOST."""
    column = MEASURE_COLUMN[spec.measure]
    pairs = [(s, _value(a[s], column), _value(b[s], column)) for s in seeds]
    pairs = [(s, x, y) for s, x, y in pairs if x is not None and y is not None]
    used, differences = tuple(s for s, _, _ in pairs), [x - y for _, x, y in pairs]
    if spec.measure == "peak_memory_gb":
        kinds = {r.get("memory_kind") for rows in (a, b) for s, r in rows.items() if s in used}
        if len(kinds) != 1:
            return Outcome(spec, used, None, "seed paired t", None, INCONCLUSIVE,
                           note=f"memory kinds differ: {sorted(map(str, kinds))}")
    if spec.kind == "equivalence":
        base = _arm_mean(a, column)                                   # Full FT's mean seconds per epoch
        delta = PER_EPOCH_MARGIN * base if base else 0.0
        tost = seed_equivalence(differences, delta)
        return Outcome(spec, used, tost.mean, f"seed paired t TOST, δ = {delta:.1f} s", tost.p, tost.verdict,
                       seed_level=seed_level(differences), delta=delta)
    mean, p, verdict = cost_test(differences)
    return Outcome(spec, used, mean, "seed paired t", p, verdict, seed_level=seed_level(differences))


def decide(spec: ComparisonSpec, frame: pd.DataFrame, metric: str) -> Outcome:
    """One pre-registered comparison on the study's records (``frame``: analysis.study.arms.load_study's rows)."""
    arms = {arm.name: arm for arm in ARMS}
    a, b = arm_rows(frame, arms[spec.better]), arm_rows(frame, arms[spec.worse])
    seeds, notes = paired_seeds(a, b)
    if not seeds:
        missing = [name for name, rows in ((spec.better, a), (spec.worse, b)) if not rows]
        why = f"no records for {', '.join(missing)}" if missing else "no seed in common"
        return Outcome(spec, (), None, "–", None, NO_RECORDS, note="; ".join([why, *notes]))
    outcome = (_score_outcome(spec, a, b, seeds, metric) if spec.measure == "score"
               else _cost_outcome(spec, a, b, seeds))
    return replace(outcome, note="; ".join(x for x in (outcome.note, *notes) if x))


def study2_outcomes(frame: pd.DataFrame, metrics: dict[str, str]) -> list[Outcome]:
    """Every comparison of COMPARISONS, each task's Holm verdicts set (``metrics``: task -> its first metric)."""
    outcomes = [decide(spec, frame, metrics.get(spec.task, "")) for spec in COMPARISONS]
    for task in dict.fromkeys(o.spec.task for o in outcomes):
        mine = [i for i, o in enumerate(outcomes) if o.spec.task == task]
        adjusted = holm_verdicts([(outcomes[i].mean or 0.0, outcomes[i].p, outcomes[i].spec.kind) for i in mine])
        for i, verdict in zip(mine, adjusted):
            outcomes[i] = replace(outcomes[i], holm=verdict if outcomes[i].p is not None else outcomes[i].verdict)
    return outcomes


def combine(verdicts: list[str]) -> str:
    """A claim row's verdict from its comparisons' (module docstring)."""
    if not verdicts or all(v == NO_RECORDS for v in verdicts):
        return NO_RECORDS
    if CONTRADICTED in verdicts:
        return CONTRADICTED
    return SUPPORTED if all(v == SUPPORTED for v in verdicts) else INCONCLUSIVE


def claim_rows(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """One row per (claim, task, reading, part): its comparisons and its raw and Holm verdicts."""
    groups: dict[tuple[str, str, str, str], list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault((o.spec.claim, o.spec.task, o.spec.reading, o.part), []).append(o)
    return [{"claim": c, "task": t, "reading": r, "part": p, "outcomes": these,
             "verdict": combine([o.verdict for o in these]), "holm": combine([o.holm for o in these])}
            for (c, t, r, p), these in groups.items()]


# -- claims.md -------------------------------------------------------------------------------------------------
def _p(value: Optional[float]) -> str:
    return "–" if value is None else "<0.001" if value < 0.001 else f"{value:.3f}"


def _num(value: Optional[float], places: int = 2) -> str:
    return "–" if value is None else f"{value:+.{places}f}"


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _seed_cell(o: Outcome) -> str:
    if o.seed_level is None:
        return "–"
    places = 1 if o.spec.measure != "score" else 2
    return (f"{o.seed_level.interval.show_ci(places)}, t p {_p(o.seed_level.t_p)}, "
            f"sign-flip p {_p(o.seed_level.sign_flip_p)}")


def _reading(reading: str) -> str:
    return {"sgd": "ZO-SGD (eq. 3)", "adamw": "ZO AdamW (§4.2)", "": "–"}[reading]


RULES_TEXT = (
    "Every comparison is the pre-registered one (analysis/study/study2_spec.py `COMPARISONS`, tests in "
    "analysis/study/prereg.py, both committed before the study's first record), oriented so that a positive mean is "
    "the paper's direction. **Deciding tests**: a score difference by the example-level paired sign-flip test "
    "stratified by seed (for 0/1 scores the exact McNemar test on the discordant examples pooled over seeds); claim "
    "7's stability by the example-level stratified bootstrap TOST, δ = {stab:g} × the r = 0.1 arm's mean; claim 8's "
    "time and memory by the seed-level paired t test; claim 8 per epoch by the seed-level paired t TOST, δ = {epoch:g} "
    "× Full FT's mean seconds per epoch. α = 0.05; **Holm** over all comparisons of one task. The seed-level 95 % t "
    "interval, its t p and the exact sign-flip p over seeds are printed beside every comparison and never decide. "
    "Seeds pair only when both runs name the same CPU model. The example-level tests generalise over evaluation "
    "examples for the models trained here, not over training seeds.")


def shown(verdict: str, part: str) -> str:
    """A claim row's verdict as claims.md says it: claim 8 per epoch is an equivalence that neither supports nor
    contradicts "faster"; it says whether all of the speed-up is the epoch count."""
    if part != "per epoch":
        return verdict
    return {SUPPORTED: f"equivalent within ±{PER_EPOCH_MARGIN:.0%}: the speed-up is the epoch count",
            INCONCLUSIVE: "equivalence not shown"}.get(verdict, verdict)


def render_study2_claims(outcomes: list[Outcome], banner: list[str]) -> str:
    """claims.md of study 2: the claims' verdicts, then every comparison with its deciding test."""
    lines = ["# The paper's claims on the second CPU study (pre-registered tests)", "", *banner,
             RULES_TEXT.format(stab=STABILITY_MARGIN, epoch=PER_EPOCH_MARGIN), "",
             _row(["claim", "task", "ZO reading", "part", "verdict", "Holm verdict"]), _row(["---"] * 6)]
    for row in claim_rows(outcomes):
        lines.append(_row([f"({row['claim']}) {CLAIM_TEXT[row['claim']]}", TASK_DISPLAY.get(row["task"], row["task"]),
                           _reading(row["reading"]), row["part"] or "–",
                           f"**{shown(row['verdict'], row['part'])}**", f"**{shown(row['holm'], row['part'])}**"]))
    for task in dict.fromkeys(o.spec.task for o in outcomes):
        mine = [o for o in outcomes if o.spec.task == task]
        tested = sum(o.p is not None for o in mine)
        family = ("one Holm family" if tested == len(mine) else
                  f"one Holm family; Holm ran over the {tested} with a p value, the others have none yet")
        lines += ["", f"## {TASK_DISPLAY.get(task, task)}: {len(mine)} comparisons ({family})", "",
                  _row(["claim", "better − worse", "measure", "kind", "seeds", "examples", "mean", "deciding test",
                        "p", "verdict", "Holm", "seed level: mean [95 % CI], t p, sign-flip p", "note"]),
                  _row(["---"] * 13)]
        for o in mine:
            places = 1 if o.spec.measure != "score" else 2
            lines.append(_row([o.spec.claim, f"{o.spec.better} − {o.spec.worse}", o.spec.measure, o.spec.kind,
                               len(o.seeds), o.examples or "–", _num(o.mean, places), o.test, _p(o.p), o.verdict,
                               o.holm, _seed_cell(o), o.note or ""]))
    return "\n".join(lines) + "\n"


def outcomes_json(outcomes: list[Outcome]) -> dict[str, Any]:
    """study.json's claims of study 2: each comparison's numbers, and each claim row's verdicts."""
    comparisons = [{"claim": o.spec.claim, "task": o.spec.task, "better": o.spec.better, "worse": o.spec.worse,
                    "kind": o.spec.kind, "measure": o.spec.measure, "reading": o.spec.reading, "seeds": list(o.seeds),
                    "examples": o.examples, "mean": o.mean, "test": o.test, "p": o.p, "delta": o.delta,
                    "verdict": o.verdict, "holm": o.holm, "note": o.note,
                    "seed_t_p": o.seed_level.t_p if o.seed_level else None,
                    "seed_sign_flip_p": o.seed_level.sign_flip_p if o.seed_level else None} for o in outcomes]
    claims = [{k: v for k, v in row.items() if k != "outcomes"} for row in claim_rows(outcomes)]
    return {"comparisons": comparisons, "claims": claims}
