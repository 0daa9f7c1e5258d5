"""Sweep plots (ρ: Table 4; r = η_ZO/η_FO: Figure 3; α: Figure 4) with the paper's points, and partition maps.

    python -m analysis.sweeps --results results/runs --out results/figures [--paper results/paper]

Each plot is written as PNG and PDF. A partition map shows, for one Hi-ZFO run, which tensors of each layer
went to the first-order set, the zeroth-order set or stayed frozen (record["partition"]["tensor_sets"]).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.loading import Report, aggregate, load_records, settle_cells  # noqa: E402
from analysis.specs import (EXPERIMENTS, SWEEP_SYMBOL, SWEPT_DEFAULTS, TASK_DISPLAY, ExperimentSpec, Grid,  # noqa: E402
                            model_display)
from analysis.tables import (DEFAULT_PAPER, CellKey, parse_cli, cell_lookup, grid_has_records, grid_key,  # noqa: E402
                             task_score)

SET_COLOURS = {"fo": "#d62728", "zo": "#1f77b4", "frozen": "#c7c7c7"}
SET_NAMES = {"fo": "first-order (Θ_FO)", "zo": "zeroth-order (Θ_ZO)", "frozen": "frozen"}
SWEEPS = (("table4", "rho_sweep"), ("fig3", "lr_ratio_sweep"), ("fig4", "alpha_sweep"))


def save_figure(figure: plt.Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write ``stem``.png and ``stem``.pdf and close the figure."""
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    for path in paths:
        figure.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(figure)
    return paths


def score_key(task: str) -> str:
    """The metric a sweep plots: ROUGE-1 for summaries (as the paper's figures), else the task's accuracy."""
    return task_score(task).keys[0]


def series(grid: Grid, lookup: dict[CellKey, pd.Series], model: str, column: str) -> pd.DataFrame:
    """x (the swept value), mean, std for one model along the grid's sweep; cells without a value dropped."""
    task, method = grid.tasks[0], grid.methods[0]
    rows = []
    for value in grid.sweep_values:
        row = lookup.get(grid_key(model, task, method, grid.sweep_key, value))
        if row is not None and not pd.isna(row.get(f"{column}:mean")):
            std = row.get(f"{column}:std")
            rows.append({"x": value, "mean": row[f"{column}:mean"], "std": 0.0 if pd.isna(std) else std})
    return pd.DataFrame(rows, columns=["x", "mean", "std"])


def _is_paper_only(grid: Grid, lookup: dict[CellKey, pd.Series]) -> bool:
    sources: set[str] = set()
    for model, task, method, value in grid.cells():
        row = lookup.get(grid_key(model, task, method, grid.sweep_key, value))
        if row is not None:
            sources.update(row["sources"])
    return sources == {"paper"}


def plot_sweep(spec: ExperimentSpec, grid: Grid, scale: str, lookup: dict[CellKey, pd.Series],
               paper_lookup: dict[CellKey, pd.Series], out_dir: Path, stem: str) -> list[Path]:
    """Score (and for ρ also time and memory) against the swept value, one line per model, paper points overlaid."""
    task = grid.tasks[0]
    metric = score_key(task)
    with_costs = spec.name == "table4"
    panels = [("score", f"metric.{metric}", f"{metric} on {TASK_DISPLAY.get(task, task)} (×100)")]
    if with_costs:
        seconds = scale == "cpu"
        panels += [("time", "train_seconds" if seconds else "time_h",
                    "training time (s)" if seconds else "training time (h)"),
                   ("memory", "mem_gb", "peak RSS (GB, CPU)" if scale == "cpu" else "peak memory (GB)")]
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    paper_only = _is_paper_only(grid, lookup)
    overlay = bool(paper_lookup) and not paper_only
    markers = "osD^v<>"
    for axis, (panel, column, ylabel) in zip(axes[0], panels):
        for i, model in enumerate(grid.models):
            points = series(grid, lookup, model, column)
            if points.empty:
                continue
            axis.errorbar(points["x"], points["mean"], yerr=points["std"], marker=markers[i % len(markers)],
                          capsize=3, label=model_display(model) + (" (paper)" if paper_only else " (measured)"))
        axis.set_xlabel(SWEEP_SYMBOL.get(grid.sweep_key or "", grid.sweep_key or ""))
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        if overlay:
            _overlay_paper(axis, spec.paper, paper_lookup, "time_h" if panel == "time" else column,
                           twin=(scale == "cpu" and panel != "score"), panel=panel)
        axis.legend(fontsize=7)
    default = SWEPT_DEFAULTS["hizfo"].get(grid.sweep_key or "")
    for axis in axes[0]:
        if default is not None:
            axis.axvline(default, color="grey", linestyle=":", linewidth=1)
    where = "CPU-scale twin" if scale == "cpu" else "paper scale"
    figure.suptitle(f"{spec.title} ({where}; dotted line: the paper's default)", fontsize=10)
    figure.tight_layout()
    return save_figure(figure, out_dir, stem)


def _overlay_paper(axis: plt.Axes, grid: Grid, paper_lookup: dict[CellKey, pd.Series], column: str, twin: bool,
                   panel: str) -> None:
    """The paper's points as hollow markers joined by dashed lines (on a right axis when units differ)."""
    target = axis.twinx() if twin else axis
    drawn = False
    for i, model in enumerate(grid.models):
        points = series(grid, paper_lookup, model, column)
        if points.empty:
            continue
        target.plot(points["x"], points["mean"], linestyle="--", marker="os"[i % 2], markerfacecolor="none",
                    color="black", alpha=0.7, label=f"paper: {model_display(model)}")
        drawn = True
    if twin and drawn:
        target.set_ylabel({"time": "paper: training time (h)", "memory": "paper: GPU memory (GB)"}.get(panel, "paper"))
        target.legend(fontsize=7, loc="lower right")
    elif twin:
        target.set_yticks([])


# ---------------------------------------------------------------------------------------------------
# partition maps

_SHORT = re.compile(r"^.*?\.(\d+)\.")


def short_name(name: str, layer: Optional[int]) -> str:
    """The tensor's name inside its block (``self_attn.q_proj.weight``), or its last two parts outside one."""
    if layer is not None:
        return _SHORT.sub("", name, count=1)
    return ".".join(name.split(".")[-2:])


def partition_rows(tensor_sets: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Tensors grouped into rows from the input side: embeddings, one row per layer, then the output side."""
    rows: dict[str, list[dict[str, Any]]] = {}
    seen_layer = False
    for entry in tensor_sets:
        layer = entry.get("layer")
        if layer is None:
            label = "output side" if seen_layer else "input side"
        else:
            seen_layer = True
            label = f"layer {layer}"
        rows.setdefault(label, []).append(entry)
    return list(rows.items())


def plot_partition(record_row: pd.Series, out_dir: Path, stem: str) -> list[Path]:
    """One run's FO / ZO / frozen tensors as a map (rows: layers, input at the bottom) with per-row parameters."""
    partition = record_row["partition"]
    tensor_sets = partition["tensor_sets"]
    rows = partition_rows(tensor_sets)
    width = max(len(entries) for _, entries in rows)
    figure, (left, right) = plt.subplots(1, 2, figsize=(min(5 + 0.5 * width, 20), 2.8 + 0.4 * len(rows)),
                                         gridspec_kw={"width_ratios": [3, 1]}, sharey=True)
    for y, (label, entries) in enumerate(rows):
        for x, entry in enumerate(entries):
            left.add_patch(Rectangle((x, y), 0.92, 0.85, color=SET_COLOURS.get(entry["set"], "white")))
            if not label.startswith("layer"):            # tensors outside the blocks: name them in place
                parts = entry["name"].split(".")
                text = parts[-2][-14:] + ("" if parts[-1] == "weight" else f"\n.{parts[-1]}")
                left.text(x + 0.46, y + 0.42, text, ha="center", va="center", fontsize=5, clip_on=True)
        start = 0.0
        for name in SET_COLOURS:
            value = sum(e["numel"] for e in entries if e["set"] == name) / 1e6
            right.barh(y + 0.425, value, left=start, height=0.85, color=SET_COLOURS[name])
            start += value
    left.set_xlim(0, width)
    left.set_ylim(0, len(rows))
    left.set_yticks([y + 0.425 for y in range(len(rows))], [label for label, _ in rows], fontsize=7)
    layer_rows = [entries for label, entries in rows if label.startswith("layer")]
    template = layer_rows[0] if layer_rows else rows[0][1]
    left.set_xticks([x + 0.46 for x in range(len(template))],
                    [short_name(e["name"], e.get("layer")) for e in template], rotation=90, fontsize=6)
    left.set_xlabel("tensors of a block, in the model's order (input side at the bottom)", fontsize=8)
    right.set_xlabel("parameters (millions)", fontsize=8)
    counts = {s: sum(1 for e in tensor_sets if e["set"] == s) for s in SET_COLOURS}
    params = {s: sum(e["numel"] for e in tensor_sets if e["set"] == s) for s in SET_COLOURS}
    total = max(1, sum(params.values()))
    figure.legend(handles=[Patch(color=SET_COLOURS[s], label=f"{SET_NAMES[s]}: {counts[s]} tensors, "
                                 f"{100 * params[s] / total:.1f}% of parameters") for s in SET_COLOURS],
                  fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 0.93), ncol=3, frameon=False)
    share = partition.get("backward_flops_share")
    rho = record_row.get("rho")
    task = TASK_DISPLAY.get(record_row["task"], record_row["task"])
    figure.suptitle(f"{model_display(record_row['model'])} · {task}"
                    f" · {record_row['method']}" + (f" ρ={rho:g}" if rho is not None and not pd.isna(rho) else "")
                    + (f" · backward FLOPs spent: {100 * share:.0f}% of full" if share is not None else "")
                    + f" · {record_row['path']}", fontsize=8)
    figure.tight_layout(rect=(0, 0, 1, 0.86))
    return save_figure(figure, out_dir, stem)


def partition_runs(settled: pd.DataFrame) -> list[pd.Series]:
    """One Hi-ZFO run per model (paper-default hyperparameters, lowest seed) whose record has a tensor map."""
    if settled.empty:
        return []
    defaults = SWEPT_DEFAULTS["hizfo"]
    chosen = []
    candidates = settled[(settled["method"] == "hizfo")].sort_values(["model", "task", "seed"])
    for _, group in candidates.groupby("model", sort=True):
        for _, row in group.iterrows():
            at_defaults = all(row[k] is not None and not pd.isna(row[k]) and abs(row[k] - v) < 1e-9
                              for k, v in defaults.items())
            if at_defaults and isinstance(row["partition"], dict) and row["partition"].get("tensor_sets"):
                chosen.append(row)
                break
    return chosen


def _file_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")


# ---------------------------------------------------------------------------------------------------
# driver


def write_sweeps(results_dir: Path, out_dir: Path, paper_dir: Optional[Path] = DEFAULT_PAPER,
                 report: Optional[Report] = None) -> list[Path]:
    """Every sweep plot and partition map the records allow; returns the files written."""
    report = report or Report()
    settled = settle_cells(load_records(results_dir, report), report)
    if settled.empty:
        report.warn(f"no usable (status ok) records under {results_dir}")
        return []
    lookup = cell_lookup(aggregate(settled))
    paper_lookup: dict[CellKey, pd.Series] = {}
    if paper_dir is not None and paper_dir.is_dir() and paper_dir.resolve() != results_dir.resolve():
        paper_lookup = cell_lookup(aggregate(settle_cells(load_records(paper_dir, Report(quiet=True)),
                                                          Report(quiet=True))))
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, stem in SWEEPS:
        spec = EXPERIMENTS[name]
        for scale, grid in (("paper", spec.paper), ("cpu", spec.cpu)):
            if grid_has_records(grid, lookup):
                written += plot_sweep(spec, grid, scale, lookup, paper_lookup, out_dir,
                                      stem if scale == "paper" else f"{stem}_cpu")
            else:
                report.note(f"{stem} ({scale} scale): no records for its cells; not plotted")
    for row in partition_runs(settled):
        written += plot_partition(row, out_dir, _file_stem(f"partition_{row['model']}_{row['task']}"))
    return written


def main(argv: Optional[list[str]] = None) -> int:
    results, out, paper = parse_cli(__doc__.splitlines()[0], "where the plots go", argv)
    written = write_sweeps(results, out, paper, Report())
    if not written:
        print(f"error: nothing to plot: no usable record under {results} belongs to a sweep or has a "
              f"partition map", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
