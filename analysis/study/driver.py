"""The real-model study: arms with 95 % t intervals over seeds, paired differences, the paper's claims
checked one by one, and plots.

    python -m analysis.study --results results/smollm2 --out results/smollm2/report [--margin 0.05]

Reads only the records under ``--results`` (analysis.loading; status ``ok`` only) and writes to ``--out``:
``report.md`` (a table of arms per task and the paired differences), ``claims.md`` (one row per claim of the
paper, with its numbers, its verdict and the criterion behind it), ``study.json`` (the same numbers), and PNG + PDF
plots: learning curves, the arms' scores, and the ρ / r / α sweeps. A ``disclosures.md`` in the folder above
``--results`` (committed with the study) ends both markdown files.

An *arm* is (model, task, method, variant), its variant cleaned so that the same computation gets the same
name. The rooms: the arms in analysis/study/arms.py, the statistics in analysis/study/stats.py, the claims and
their criteria in analysis/study/claims.py, report.md, claims.md and the plots in analysis/study/report.py.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from analysis.loading import Report
from analysis.study.arms import arms_of, interim_arms, load_study, task_metrics
from analysis.study.claims import study_claims
from analysis.study.report import (interim_banner, plot_curves, plot_scores, plot_sweeps, read_curves, render_claims,
                                   render_report)
from analysis.study.stats import ALPHA, EQUIVALENCE_CONFIDENCE, POWER
from analysis.study.study2 import is_study2, outcomes_json, render_study2_claims, study2_outcomes
from analysis.study.study2_plan import plan_section, rerun_section

# Claim 7's equivalence margin, fixed before any study result: δ = 0.05 × the r = 0.1 arm's mean score (on pydoc's
# ROUGE-1 near 30 that is ±1.5 points). --margin changes it; a changed margin must be said in the report.
DEFAULT_MARGIN = 0.05


DISCLOSURES = "disclosures.md"


def disclosures(results_dir: str | Path) -> str:
    """The study's committed disclosures (``<results_dir>/../disclosures.md``: what changed during the study and
    what its text got wrong, which no record shows), as a section for the end of report.md and claims.md; "" when
    there is none."""
    path = Path(results_dir).parent / DISCLOSURES
    if not path.is_file():
        return ""
    return f"\n## Disclosures (`{path.name}`, beside the records)\n\n{path.read_text().strip()}\n"


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
    outcomes = (study2_outcomes(frame, {task: task_metrics(task, frame)[0] for task in sorted(set(frame["task"]))})
                if is_study2(frame) else None)      # study 2: its pre-registered comparisons (analysis/study/study2.py)
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
    disclosed = disclosures(results_dir)
    plan = "" if outcomes is None else "\n" + "\n".join(plan_section(frame) + rerun_section(frame, results_dir))
    pairs = None if outcomes is None else "Paired differences: the pre-registered comparisons, in claims.md."
    (out / "report.md").write_text(render_report(arms, shared, all_notes, frame, pairs) + plan + disclosed)
    (out / "claims.md").write_text((render_claims(claims, margin, arms) if outcomes is None else
                                    render_study2_claims(outcomes, interim_banner(arms))) + disclosed)
    summary = {
        "arms": [{"model": a.model, "task": a.task, "method": a.method, "variant": a.variant, "seeds": a.seeds,
                  "planned_seeds": a.planned_seeds,
                  "metrics": {m: asdict(a.interval(f"metric.{m}")) for m in task_metrics(a.task, frame)},
                  "train_seconds": asdict(a.interval("train_seconds")),
                  "seconds_per_epoch": asdict(a.interval("seconds_per_epoch")),
                  "peak_memory_gb": asdict(a.interval("mem_gb")),
                  "memory_kind": sorted({k for k in a.rows["memory_kind"] if isinstance(k, str)})} for a in arms],
        "claims": [asdict(c) for c in claims] if outcomes is None else outcomes_json(outcomes),
        "shared_settings": {f"{m}/{t}": v for (m, t), v in shared.items()},
        "interim": bool(interim_arms(arms)), "notes": all_notes, "plots": [str(p) for p in plots], "margin": margin,
        "tests": {"alpha": ALPHA, "power": POWER, "equivalence_confidence": EQUIVALENCE_CONFIDENCE,
                  "multiplicity": "Holm, per (model, task)"},
    }
    (out / "study.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.study", description=__doc__.splitlines()[0])
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
    claims = summary["claims"]["claims"] if isinstance(summary["claims"], dict) else summary["claims"]  # study 2's
    print(f"{len(summary['arms'])} arms, {len(claims)} claim rows: {args.out / 'report.md'}, "
          f"{args.out / 'claims.md'}, {args.out / 'study.json'}, {len(summary['plots'])} plot files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
