"""Sweep plots (ρ: Table 4; r = η_ZO/η_FO: Figure 3; α: Figure 4) with the paper's points, and partition maps.

    python -m analysis.sweeps --results results/runs --out results/figures [--paper results/paper]

Each plot is written as PNG and PDF: every spec of analysis/paper/experiments.py with a ``plot`` stem, at each scale
it has records for. A sweep draws a line per model and per method of its grid (Figure 4: both readings of α,
ALPHA_READINGS), with one legend below the panels. A partition map shows, for one Hi-ZFO run, which tensors of each
layer went to the first-order set, the zeroth-order set or stayed frozen (record["partition"]["tensor_sets"]); the
tensors outside the layers carry their full names in their boxes.
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

from analysis.cells import CellKey, cell_lookup, grid_has_records, grid_key, task_score  # noqa: E402
from analysis.figures import save_figure  # noqa: E402
from analysis.loading import Report, aggregate, load_records, settle_cells  # noqa: E402
from analysis.paper.experiments import ALPHA_READINGS, EXPERIMENTS, ExperimentSpec  # noqa: E402
from analysis.paper.tables import DEFAULT_PAPER, parse_cli  # noqa: E402
from analysis.specs import (METHOD_DISPLAY, SWEEP_SYMBOL, SWEPT_DEFAULTS, TASK_DISPLAY, Grid,  # noqa: E402
                            method_display, model_display)

SET_COLOURS = {"fo": "#d62728", "zo": "#1f77b4", "frozen": "#c7c7c7"}
SET_NAMES = {"fo": "first-order (Θ_FO)", "zo": "zeroth-order (Θ_ZO)", "frozen": "frozen"}


def score_key(task: str) -> str:
    """The metric a sweep plots: ROUGE-1 for summaries (as the paper's figures), else the task's accuracy."""
    return task_score(task).keys[0]


def score_label(task: str) -> str:
    """The score axis: the metric, the task and its scale (ROUGE and EM ×100, accuracy and pass@1 as fractions)."""
    score = task_score(task)
    scale = "fraction" if score.decimals == 3 else "×100"
    return f"{score.keys[0]} on {TASK_DISPLAY.get(task, task)} ({scale})"


def series(grid: Grid, lookup: dict[CellKey, pd.Series], model: str, column: str,
           method: Optional[str] = None) -> pd.DataFrame:
    """x (the swept value), mean, std for one model and method (the grid's first unless named) along the sweep;
    cells without a value dropped."""
    task, method = grid.tasks[0], method or grid.methods[0]
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


def series_label(grid: Grid, model: str, method: str) -> str:
    """``tiny-OPT``, or ``tiny-OPT · Hi-ZFO (α in loss)`` where the grid holds several methods."""
    return model_display(model) + (f" · {METHOD_DISPLAY.get(method, method)}" if len(grid.methods) > 1 else "")


LINESTYLES = ("-", "-.", (0, (5, 1, 1, 1, 1, 1)), ":")     # one per method of a grid (the paper's points: "--")
MARKERS = "osD^v<>"


def sweep_figure(spec: ExperimentSpec, grid: Grid, scale: str, lookup: dict[CellKey, pd.Series],
                 paper_lookup: dict[CellKey, pd.Series]) -> plt.Figure:
    """Score (and for ρ also time and memory) against the swept value: a line per model and method of the grid
    (both readings of α in Figure 4), the paper's points overlaid, one legend below the panels."""
    task = grid.tasks[0]
    with_costs = spec.costs
    panels = [("score", f"metric.{score_key(task)}", score_label(task))]
    if with_costs:
        seconds = scale == "cpu"
        panels += [("time", "train_seconds" if seconds else "time_h",
                    "training time (s)" if seconds else "training time (h)"),
                   ("memory", "mem_gb", "peak RSS (GB, CPU)" if scale == "cpu" else "peak memory (GB)")]
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    paper_only = _is_paper_only(grid, lookup)
    # the paper's points only beside measurements of the paper's own models and tasks (a toy run is no OPT-2.7B)
    same_setting = bool(set(grid.models) & set(spec.paper.models)) and bool(set(grid.tasks) & set(spec.paper.tasks))
    overlay = bool(paper_lookup) and not paper_only and same_setting
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, (panel, column, ylabel) in zip(axes[0], panels):
        for j, method in enumerate(grid.methods):
            for i, model in enumerate(grid.models):
                points = series(grid, lookup, model, column, method)
                if points.empty:
                    continue
                # colour: the series; marker: the model; line style: the method (the paper's points are dashed)
                axis.errorbar(points["x"], points["mean"], yerr=points["std"], marker=MARKERS[i % len(MARKERS)],
                              linestyle=LINESTYLES[j % len(LINESTYLES)], capsize=3,
                              color=colours[(j * len(grid.models) + i) % len(colours)],
                              label=series_label(grid, model, method) + (" (paper)" if paper_only else " (measured)"))
        axis.set_xlabel(SWEEP_SYMBOL.get(grid.sweep_key or "", grid.sweep_key or ""))
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        if overlay:
            _overlay_paper(axis, spec.paper, paper_lookup, "time_h" if panel == "time" else column,
                           twin=(scale == "cpu" and panel != "score"), panel=panel)
    default = SWEPT_DEFAULTS["hizfo"].get(grid.sweep_key or "")
    for axis in axes[0]:
        if default is not None:
            axis.axvline(default, color="grey", linestyle=":", linewidth=1)
    where = "CPU-scale twin" if scale == "cpu" else "paper scale"
    figure.suptitle(f"{spec.title} ({where}; dotted line: the paper's default)", fontsize=10)
    figure.tight_layout()
    # one legend for all panels, below them: in-axes legends hid lines and each other (a twin axis has its own)
    handles: dict[str, Any] = {}
    for axis in figure.axes:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    labels = sorted(handles, key=lambda label: label.startswith("paper:"))       # measured first, then the paper
    if labels:
        figure.legend([handles[label] for label in labels], labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                      ncol=min(len(handles), 3 if len(panels) > 1 else 2), fontsize=8, frameon=False)
    return figure


def plot_sweep(spec: ExperimentSpec, grid: Grid, scale: str, lookup: dict[CellKey, pd.Series],
               paper_lookup: dict[CellKey, pd.Series], out_dir: Path, stem: str) -> list[Path]:
    """The sweep figure (``sweep_figure``) as ``stem``.png and .pdf."""
    return save_figure(sweep_figure(spec, grid, scale, lookup, paper_lookup), out_dir, stem)


def _overlay_paper(axis: plt.Axes, grid: Grid, paper_lookup: dict[CellKey, pd.Series], column: str, twin: bool,
                   panel: str) -> None:
    """The paper's points as hollow markers joined by dashed lines (on a right axis when units differ)."""
    target = axis.twinx() if twin else axis
    drawn = False
    for method in grid.methods:
        for i, model in enumerate(grid.models):
            points = series(grid, paper_lookup, model, column, method)
            if points.empty:
                continue
            target.plot(points["x"], points["mean"], linestyle="--", marker="os"[i % 2], markerfacecolor="none",
                        color="black", alpha=0.7, label=f"paper: {series_label(grid, model, method)}")
            drawn = True
    if twin and drawn:
        target.set_ylabel({"time": "paper: training time (h)", "memory": "paper: GPU memory (GB)"}.get(panel, "paper"))
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


def wrap_candidates(name: str) -> list[str]:
    """``name`` broken into 1, 2, … lines after a "." or "_" (joined back, the lines are ``name`` exactly)."""
    pieces = re.findall(r"[^._]*[._]|[^._]+$", name)
    candidates: list[str] = []
    for width in range(len(name), 0, -1):                # greedy: as many pieces per line as fit in `width`
        lines = [""]
        for piece in pieces:
            if lines[-1] and len(lines[-1]) + len(piece) > width:
                lines.append("")
            lines[-1] += piece
        text = "\n".join(lines)
        if text not in candidates:
            candidates.append(text)
    return candidates


LABEL_FONT_SIZES = (6.0, 5.5, 5.0, 4.5, 4.0)
_PAD_PX = 1.0


def _fits(inner: Any, outer: Any) -> bool:
    return (inner.x0 >= outer.x0 + _PAD_PX and inner.x1 <= outer.x1 - _PAD_PX and inner.y0 >= outer.y0 + _PAD_PX
            and inner.y1 <= outer.y1 - _PAD_PX)


def fit_labels(figure: plt.Figure, placed: list[tuple[Rectangle, Any]]) -> bool:
    """Set each text inside its box: the largest font size, then the fewest lines, at which it fits whole.
    False when some name does not fit even at the smallest size (it is then left at that size, fewest lines)."""
    renderer = figure.canvas.get_renderer()
    all_fit = True
    for box, text in placed:
        outer = box.get_window_extent(renderer)
        candidates = wrap_candidates(text.get_gid())
        fitted = False
        for size in LABEL_FONT_SIZES:
            text.set_fontsize(size)
            for candidate in candidates:
                text.set_text(candidate)
                if _fits(text.get_window_extent(renderer), outer):
                    fitted = True
                    break
            if fitted:
                break
        if not fitted:
            text.set_text(candidates[-1])
            all_fit = False
    return all_fit


def _draw_rows(left: Any, right: Any, rows: list, width: int) -> list[tuple[Rectangle, Any]]:
    """The tensor boxes (left) and each row's parameters by set (right); the boxes outside the blocks with their
    name texts, which ``fit_labels`` sizes."""
    placed: list[tuple[Rectangle, Any]] = []
    for y, (label, entries) in enumerate(rows):
        inside = label.startswith("layer")
        step = 1.0 if inside else width / len(entries)      # outside the blocks: the row's width shared out
        for x, entry in enumerate(entries):
            box = Rectangle((x * step, y), step - 0.08, 0.85, color=SET_COLOURS.get(entry["set"], "white"))
            left.add_patch(box)
            if not inside:
                text = left.text((x + 0.5) * step - 0.04, y + 0.425, entry["name"], ha="center", va="center",
                                 fontsize=LABEL_FONT_SIZES[0], gid=entry["name"])
                placed.append((box, text))
        start = 0.0
        for name in SET_COLOURS:
            value = sum(e["numel"] for e in entries if e["set"] == name) / 1e6
            right.barh(y + 0.425, value, left=start, height=0.85, color=SET_COLOURS[name])
            start += value
    return placed


def _label_axes(left: Any, right: Any, rows: list, layer_rows: list, width: int) -> None:
    left.set_xlim(0, width)
    left.set_ylim(0, len(rows))
    left.set_yticks([y + 0.425 for y in range(len(rows))], [label for label, _ in rows], fontsize=7)
    if layer_rows:
        template = layer_rows[0]
        left.set_xticks([x + 0.46 for x in range(len(template))],
                        [short_name(e["name"], e.get("layer")) for e in template], rotation=90, fontsize=6)
        left.set_xlabel("a layer's tensors, in the model's order (input side at the bottom; outside the layers: "
                        "full names in the boxes)", fontsize=8)
    else:
        left.set_xticks([])
    right.set_xlabel("parameters (millions)", fontsize=8)


def _legend_and_title(figure: plt.Figure, record_row: pd.Series, height: float) -> None:
    """The sets' legend and the run's title, in a fixed band above the axes (figure.text, which tight_layout
    leaves where it is)."""
    partition = record_row["partition"]
    tensor_sets = partition["tensor_sets"]
    counts = {s: sum(1 for e in tensor_sets if e["set"] == s) for s in SET_COLOURS}
    params = {s: sum(e["numel"] for e in tensor_sets if e["set"] == s) for s in SET_COLOURS}
    total = max(1, sum(params.values()))
    figure.legend(handles=[Patch(color=SET_COLOURS[s], label=f"{SET_NAMES[s]}: {counts[s]} tensors, "
                                 f"{100 * params[s] / total:.1f}% of parameters") for s in SET_COLOURS],
                  fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.42 / height), ncol=3, frameon=False)
    share = partition.get("backward_flops_share")
    rho = record_row.get("rho")
    task = TASK_DISPLAY.get(record_row["task"], record_row["task"])
    figure.text(0.5, 1 - 0.06 / height, f"{model_display(record_row['model'])} · {task}"
                    f" · {method_display(record_row['method'])}"
                    + (f" ρ={rho:g}" if rho is not None and not pd.isna(rho) else "")
                    + (f" · backward FLOPs spent: {100 * share:.0f}% of full" if share is not None else "")
                    + f"\n{record_row['path']}", fontsize=8, ha="center", va="top")


def partition_figure(record_row: pd.Series) -> plt.Figure:
    """One run's FO / ZO / frozen tensors as a map (rows: layers, input at the bottom) with per-row parameters.

    A layer row has a box per tensor under the column of its name (the x axis); the tensors outside the blocks
    (embeddings, final norm, head) share their row's width and carry their full names inside the boxes, wrapped
    and sized to fit whole (the figure widens if a name cannot fit at 4 pt)."""
    rows = partition_rows(record_row["partition"]["tensor_sets"])
    layer_rows = [entries for label, entries in rows if label.startswith("layer")]
    width = max(len(entries) for entries in layer_rows) if layer_rows else max(len(e) for _, e in rows)
    height = 2.8 + 0.4 * len(rows)
    figure, (left, right) = plt.subplots(1, 2, figsize=(min(5 + 0.5 * width, 20), height),
                                         gridspec_kw={"width_ratios": [3, 1]}, sharey=True)
    placed = _draw_rows(left, right, rows, width)
    _label_axes(left, right, rows, layer_rows, width)
    _legend_and_title(figure, record_row, height)
    for _ in range(4):                                   # widen until every name fits whole (rarely needed)
        figure.tight_layout(rect=(0, 0, 1, 1 - 0.75 / height))
        if fit_labels(figure, placed):
            break
        figure.set_figwidth(figure.get_figwidth() * 1.4)
    return figure


def plot_partition(record_row: pd.Series, out_dir: Path, stem: str) -> list[Path]:
    """The partition map (``partition_figure``) as ``stem``.png and .pdf."""
    return save_figure(partition_figure(record_row), out_dir, stem)


def partition_runs(settled: pd.DataFrame) -> list[pd.Series]:
    """One Hi-ZFO run per model (paper-default hyperparameters, lowest seed) whose record has a tensor map; the
    partition does not depend on the reading of α, so a loss-reading run serves where no update-reading one has one."""
    if settled.empty:
        return []
    defaults = SWEPT_DEFAULTS["hizfo"]
    chosen = []
    candidates = settled[settled["method"].isin(ALPHA_READINGS)].copy()
    candidates["reading"] = candidates["method"].map(ALPHA_READINGS.index)
    for _, group in candidates.sort_values(["model", "reading", "task", "seed"]).groupby("model", sort=True):
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
    for spec in (spec for spec in EXPERIMENTS.values() if spec.plot):
        stem = spec.plot
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
