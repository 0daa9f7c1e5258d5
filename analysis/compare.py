"""Compare whatever arms a set of records holds: one table per model × task, paired differences against a reference
arm, learning-curve plots, and the records it could not place (with why).

    python -m analysis.compare --results results/runs                        # every arm, mean ± 95 % CI over seeds
    python -m analysis.compare --results results/runs --against full_ft      # + paired differences vs Full FT
                                  # (full_ft: that arm, or the one variant of full_ft there, e.g. full_ft [debug=fast])
    python -m analysis.compare --results multirun/... --out outputs/compare  # where the curve plots go

An *arm* is a method and its variant (``hizfo``, ``hizfo [method.rho=0.2]``); seeds of an arm are pooled. The
paired difference of an arm is taken seed by seed against the reference arm of the same model and task (the seeds
both have), with a 95 % t interval. Arms whose records share a config_hash (the same computation under two
variant names) are one arm, under the shorter name. Unlike ``analysis.tables`` (the paper's fixed templates),
nothing here expects particular methods, models or tasks. Bad input (no records, an unknown reference arm): one line, exit 2.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from analysis.loading import Report, load_records
from analysis.study.stats import difference_interval, t_interval

DEFAULT_OUT = Path("outputs") / "compare"        # gitignored: nothing committed is written unless asked
# mem_over_planned: measured peak / the planner's prediction, where a CUDA run recorded one (hizfo/run/plan_fit.py)
COST_COLUMNS = {"mem_gb": "memory (GB)", "mem_over_planned": "memory / planned", "train_seconds": "train (s)"}


class CompareError(ValueError):
    """Bad input: one line naming the option, exit 2."""


@dataclass
class Placed:
    """The records placed in an arm (ok, with at least one metric) and those left out, each with why."""
    frame: pd.DataFrame
    left_out: list[tuple[str, str]] = field(default_factory=list)
    merged: list[str] = field(default_factory=list)        # arms folded into another: same config_hash


def arm_label(method: str, variant: Any) -> str:
    """``hizfo`` for the default variant, else ``hizfo [method.rho=0.2]``."""
    variant = str(variant or "default")
    return method if variant == "default" else f"{method} [{variant}]"


def place(frame: pd.DataFrame, report: Report) -> Placed:
    """Keep ok records that have a metric; name every other record (and every unreadable file) with why."""
    left_out = [tuple(message.removeprefix("skipping ").split(": ", 1)) for message in report.warnings
                if message.startswith("skipping ")]                  # an unreadable file, or one that is no record
    if frame.empty:
        return Placed(frame, left_out)
    metrics = [c for c in frame.columns if c.startswith("metric.")]
    keep = []
    for index, row in frame.iterrows():
        if row["status"] != "ok":
            left_out.append((row["path"], f"status {row['status']}: {row.get('error') or 'no error recorded'}"))
        elif not metrics or row[metrics].isna().all():
            left_out.append((row["path"], "no metric in the record"))
        else:
            keep.append(index)
    placed = frame.loc[keep].copy()
    merged: list[str] = []
    if not placed.empty:
        labels = [arm_label(m, v) for m, v in zip(placed["method"], placed["variant"])]
        placed["arm"], merged = merge_same_config(labels, list(placed["config_hash"]))
        placed = placed.sort_values("created").drop_duplicates(["model", "task", "arm", "seed"], keep="last")
    return Placed(placed, left_out, merged)


def merge_same_config(labels: list[str], hashes: list[Any]) -> tuple[list[str], list[str]]:
    """One arm for labels whose records share a config_hash (``hizfo [method.rho=0.6]`` is ``hizfo``: the same
    computation under another name), named by its shortest label; and a line per label merged away."""
    parent = {label: label for label in labels}

    def root(label: str) -> str:
        while parent[label] != label:
            label = parent[label]
        return label

    first: dict[Any, str] = {}
    for label, key in zip(labels, hashes):
        if key is None or (isinstance(key, float) and pd.isna(key)):
            continue
        a, b = root(first.setdefault(key, label)), root(label)
        if a != b:
            keep, gone = sorted((a, b), key=lambda name: (len(name), name))
            parent[gone] = keep
    merged = sorted(f"{label} merged into {root(label)} (same config_hash)" for label in parent
                    if root(label) != label)
    return [root(label) for label in labels], merged


def resolve_reference(against: str, arms: list[str], results: Path) -> str:
    """The reference arm: ``against`` itself, else the one arm of that method (``full_ft`` -> ``full_ft [debug=fast]``
    when that is its only variant here); bad input raises CompareError naming the arms."""
    if against in arms:
        return against
    variants = [arm for arm in arms if arm.partition(" [")[0] == against]
    if len(variants) == 1:
        return variants[0]
    if variants:
        raise CompareError(f"--against: {against} has {len(variants)} variants in {results}; name one: "
                           + "; ".join(repr(v) for v in variants))
    listing = ", ".join(arms[:12]) + (f", … ({len(arms)} in all)" if len(arms) > 12 else "")
    raise CompareError(f"--against: no arm '{against}' in {results}; arms: {listing}")


def group_metrics(group: pd.DataFrame) -> list[str]:
    """The metric columns some record of this model × task has, in name order."""
    return sorted(c for c in group.columns if c.startswith("metric.") and group[c].notna().any())


def arm_table(group: pd.DataFrame) -> list[str]:
    """Markdown: one row per arm, mean ± 95 % CI half-width over its seeds for every metric and cost."""
    metrics = group_metrics(group)
    columns = metrics + [c for c in COST_COLUMNS if c in group and group[c].notna().any()]
    header = ["arm", "seeds"] + [c.removeprefix("metric.") for c in metrics] + [COST_COLUMNS[c] for c in columns
                                                                                 if c in COST_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, rows in sorted(group.groupby("arm"), key=lambda item: item[0]):
        cells = [arm, str(rows["seed"].nunique())]
        cells += [t_interval(pd.to_numeric(rows[c], errors="coerce").dropna().tolist()).show() for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def paired_table(group: pd.DataFrame, reference: str) -> list[str]:
    """Markdown: each other arm minus the reference, seed by seed on the seeds both have (mean [95 % CI])."""
    metrics = group_metrics(group)
    base = group[group["arm"] == reference].set_index("seed")
    header = ["arm − " + reference, "paired seeds"] + [c.removeprefix("metric.") for c in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, rows in sorted(group.groupby("arm"), key=lambda item: item[0]):
        if arm == reference:
            continue
        other = rows.set_index("seed")
        seeds = sorted(set(other.index) & set(base.index))
        cells = [arm, str(len(seeds))]
        for column in metrics:
            diffs = [float(other.at[s, column]) - float(base.at[s, column]) for s in seeds
                     if pd.notna(other.at[s, column]) and pd.notna(base.at[s, column])]
            cells.append(difference_interval(diffs).show_ci() if diffs else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def mean_curve(rows: pd.DataFrame) -> tuple[list[float], list[float]]:
    """The arm's training-loss curve, averaged over seeds at the steps every seed's curve has."""
    per_seed = []
    for curve in rows["curve"]:
        points = curve.get("train_loss") if isinstance(curve, dict) else getattr(curve, "train_loss", None)
        if points:
            per_seed.append({float(step): float(loss) for step, loss in points})
    if not per_seed:
        return [], []
    steps = sorted(set.intersection(*(set(p) for p in per_seed)))
    return steps, [sum(p[s] for p in per_seed) / len(per_seed) for s in steps]


def plot_curves(group: pd.DataFrame, title: str, out_dir: Path) -> Optional[Path]:
    """One PNG of the arms' training-loss curves for a model × task (None when no record has a curve)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(6, 4))
    drawn = 0
    for arm, rows in sorted(group.groupby("arm"), key=lambda item: item[0]):
        steps, losses = mean_curve(rows)
        if steps:
            axis.plot(steps, losses, marker="." if len(steps) < 30 else None,
                      label=f"{arm} (n={rows['seed'].nunique()})")
            drawn += 1
    if not drawn:
        plt.close(figure)
        return None
    axis.set(xlabel="step", ylabel="training loss (window mean)", title=title)
    axis.legend(fontsize=8)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{title.replace('/', '_').replace(' ', '_')}_curves.png"
    figure.savefig(path, dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return path


def known_arms(frame: pd.DataFrame) -> list[str]:
    return sorted(set(frame["arm"])) if not frame.empty else []


def compare(results: Path, against: Optional[str], out_dir: Optional[Path]) -> list[str]:
    """The report's lines (markdown); raises CompareError on bad input."""
    if not results.is_dir():
        raise CompareError(f"--results: {results} is not a directory")
    report = Report(quiet=True)
    placed = place(load_records(results, report), report)
    frame = placed.frame
    if frame.empty:
        raise CompareError(f"--results: no usable records under {results} "
                           f"({len(placed.left_out)} file(s) could not be placed)")
    if against is not None:
        against = resolve_reference(against, known_arms(frame), results)
    lines = [f"# Arms under {results}", ""]
    lines += [f"- {line}" for line in placed.merged] + ([""] if placed.merged else [])
    for (model, task), group in sorted(frame.groupby(["model", "task"]), key=lambda item: item[0]):
        lines += [f"## {model} × {task}", ""] + arm_table(group) + [""]
        if against is not None:
            if against in set(group["arm"]):
                lines += [f"Paired differences against {against} (mean [95 % CI] over the seeds both have):", ""]
                lines += paired_table(group, against) + [""]
            else:
                lines += [f"(no {against} records for {model} × {task}: no paired differences)", ""]
        if out_dir is not None:
            plot = plot_curves(group, f"{model} {task}", out_dir)
            lines += [f"curves: {plot}", ""] if plot is not None else ["curves: none (no record has a curve)", ""]
    lines += [f"## Records not placed ({len(placed.left_out)})", ""]
    lines += [f"- {path}: {why}" for path, why in placed.left_out] or ["- none"]
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True, help="a folder of records (any depth)")
    parser.add_argument("--against", default=None, help="the reference arm for paired differences (e.g. full_ft)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"curve plots go here (default {DEFAULT_OUT})")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    try:
        lines = compare(args.results, args.against, None if args.no_plots else args.out)
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
