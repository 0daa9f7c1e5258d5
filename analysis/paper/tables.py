"""Tables 1–5 from results records, in the paper's layout, as Markdown and LaTeX, with a view against the paper.

    python -m analysis.tables --results results/runs --out results/tables [--paper results/paper]

Each table is written for every grid it has records for: the paper-scale grid and/or the CPU twin's grid
(analysis/paper/experiments.py). Cells are mean ± sample std over seeds; a cell without a record shows "–".
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from analysis.cells import CellKey, grid_has_records, grid_key, load_cells, task_score
from analysis.loading import Report
from analysis.paper.coverage import left_out, table_grids
from analysis.paper.experiments import EXPERIMENTS, TABLES, ExperimentSpec
from analysis.render import MISSING, DisplayTable, to_latex, to_markdown
from analysis.specs import QUANTITY_HEADERS, SWEEP_SYMBOL, TASK_DISPLAY, Grid, method_display, model_display

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PAPER = REPO / "results" / "paper"
GPU_KINDS = {"cuda_max_allocated", "paper_reported"}
# below this many hours in a whole table, times are shown in seconds (CPU-scale runs take seconds)
SECONDS_BELOW_HOURS = 0.1


# ---------------------------------------------------------------------------------------------------
# formatting


@dataclass
class Units:
    """How one grid's costs are shown: time in hours or seconds, and what kind of memory was measured."""
    seconds: bool
    memory_header: str
    memory_note: Optional[str]

    @property
    def time_header(self) -> str:
        return "Time (s)" if self.seconds else "Time (h)"


def choose_units(rows: list[pd.Series], memory_header: str = "Mem. (GB)") -> Units:
    """Seconds when every time is tiny (CPU scale); the memory header says CPU peak RSS when that is what it is."""
    hours = [r["time_h:mean"] for r in rows if not pd.isna(r.get("time_h:mean"))]
    seconds = bool(hours) and max(hours) < SECONDS_BELOW_HOURS
    kinds = sorted({k for r in rows for k in (r.get("memory_kinds") or [])})
    if kinds and all(k.startswith("cpu_peak_rss") for k in kinds):
        return Units(seconds, "Peak RSS (GB)", "Memory is the training process's CPU peak resident set size "
                     "(Linux VmHWM), not GPU memory: these runs had no accelerator.")
    if kinds and not set(kinds) <= GPU_KINDS:
        return Units(seconds, memory_header + "*", f"*Memory mixes kinds across cells ({', '.join(kinds)}): "
                     "CUDA peak allocated for GPU runs, peak RSS for CPU runs; compare with care.")
    return Units(seconds, memory_header, None)


def fmt_number(row: Optional[pd.Series], column: str, decimals: int, scale: float = 1.0) -> str:
    """``mean`` or ``mean±std`` (std only with several seeds); "–" when missing."""
    if row is None or pd.isna(row.get(f"{column}:mean")):
        return MISSING
    mean = row[f"{column}:mean"] * scale
    std = row.get(f"{column}:std")
    if row.get(f"{column}:n", 1) > 1 and not pd.isna(std):
        return f"{mean:.{decimals}f}±{std * scale:.{decimals}f}"
    return f"{mean:.{decimals}f}"


def fmt_score(row: Optional[pd.Series], task: str) -> str:
    """R1/R2/RL joined by "/", or one accuracy (Table 2's as fractions: records and the paper both hold them so)."""
    score = task_score(task)
    return "/".join(fmt_number(row, f"metric.{key}", score.decimals) for key in score.keys)


def fmt_time(row: Optional[pd.Series], units: Units) -> str:
    if units.seconds:
        return fmt_number(row, "train_seconds", 1)
    return fmt_number(row, "time_h", 2)


def fmt_memory(row: Optional[pd.Series]) -> str:
    small = row is not None and not pd.isna(row.get("mem_gb:mean")) and row["mem_gb:mean"] < 10
    return fmt_number(row, "mem_gb", 2 if small else 1)


def score_header(task: str, with_task: bool = False) -> str:
    header = task_score(task).header
    return f"{TASK_DISPLAY.get(task, task)} {header}" if with_task else header


# ---------------------------------------------------------------------------------------------------
# layouts


def layout_methods_by_task(spec: ExperimentSpec, grid: Grid, lookup: dict[CellKey, pd.Series]) -> DisplayTable:
    """A section per model, a row per method; per task Mem., Time and the score (the score only without costs)."""
    found = [lookup.get(grid_key(*cell[:3], None, None)) for cell in grid.cells()]
    units = choose_units([r for r in found if r is not None])
    columns: list[tuple[str, str]] = []
    for task in grid.tasks:
        group = TASK_DISPLAY.get(task, task)
        if spec.costs:
            columns += [(group, units.memory_header), (group, units.time_header), (group, score_header(task))]
        else:
            columns.append((group, task_score(task).header))
    rows, labels, sections = [], [], {}
    for model in grid.models:
        sections[len(rows)] = model_display(model)
        for method in grid.methods:
            cells: list[str] = []
            for task in grid.tasks:
                row = lookup.get(grid_key(model, task, method, None, None))
                cells += [fmt_memory(row), fmt_time(row, units)] if spec.costs else []
                cells.append(fmt_score(row, task))
            rows.append(cells)
            labels.append(method_display(method))
    body = pd.DataFrame(rows, index=labels, columns=pd.MultiIndex.from_tuples(columns))
    notes = _spec_notes(spec, grid) + ([units.memory_note] if spec.costs and units.memory_note else [])
    return DisplayTable(spec.title, spec.row_header or "Model & Method", body, sections, notes)


def _spec_notes(spec: ExperimentSpec, grid: Grid) -> list[str]:
    """The spec's own notes, and those it adds where its grid holds several methods."""
    return list(spec.notes) + (list(spec.methods_notes) if len(grid.methods) > 1 else [])


def _method_sections(grid: Grid, rows_per_method: int) -> dict[int, str]:
    """A section heading per method when a sweep grid holds several (both readings of α); none for one method."""
    if len(grid.methods) < 2:
        return {}
    return {i * rows_per_method: method_display(method) for i, method in enumerate(grid.methods)}


def fmt_quantity(row: Optional[pd.Series], quantity: str) -> str:
    """An extra quantity's mean over seeds (the backward-FLOPs share: a fraction of Full FT's backward pass)."""
    return fmt_number(row, quantity, 2)


def layout_sweep_rows(spec: ExperimentSpec, grid: Grid, lookup: dict[CellKey, pd.Series]) -> DisplayTable:
    """A row per swept value (a section per method); per model (Time, Mem,) the score and the spec's extras."""
    task = grid.tasks[0]
    found = [lookup.get(grid_key(m, t, meth, grid.sweep_key, v)) for m, t, meth, v in grid.cells()]
    units = choose_units([r for r in found if r is not None], memory_header="Mem (GB)")
    subs = ([units.time_header, units.memory_header] if spec.costs else []) + [score_header(task)]
    subs += [QUANTITY_HEADERS[q] for q in spec.extra]
    columns = [(model_display(model), sub) for model in grid.models for sub in subs]
    rows, labels = [], []
    for method in grid.methods:
        for value in grid.sweep_values:
            cells = []
            for model in grid.models:
                row = lookup.get(grid_key(model, task, method, grid.sweep_key, value))
                cells += [fmt_time(row, units), fmt_memory(row)] if spec.costs else []
                cells += [fmt_score(row, task)] + [fmt_quantity(row, q) for q in spec.extra]
            rows.append(cells)
            labels.append(spec.row_label(grid.sweep_key or "", value))
    body = pd.DataFrame(rows, index=labels, columns=pd.MultiIndex.from_tuples(columns))
    notes = [f"Task: {TASK_DISPLAY.get(task, task)}."] + _spec_notes(spec, grid)
    notes += [units.memory_note] if spec.costs and units.memory_note else []
    return DisplayTable(spec.title, spec.row_header or "Method", body, _method_sections(grid, len(grid.sweep_values)),
                        notes)


def layout_sweep_by_model_task(spec: ExperimentSpec, grid: Grid, lookup: dict[CellKey, pd.Series]) -> DisplayTable:
    """A row per swept value, a section per method; per model, a score column per task."""
    columns = [(model_display(model), score_header(task, with_task=True))
               for model in grid.models for task in grid.tasks]
    rows, labels = [], []
    for method in grid.methods:
        for value in grid.sweep_values:
            rows.append([fmt_score(lookup.get(grid_key(model, task, method, grid.sweep_key, value)), task)
                         for model in grid.models for task in grid.tasks])
            labels.append(spec.row_label(grid.sweep_key or "", value))
    body = pd.DataFrame(rows, index=labels, columns=pd.MultiIndex.from_tuples(columns))
    return DisplayTable(spec.title, spec.row_header or "Method", body, _method_sections(grid, len(grid.sweep_values)),
                        _spec_notes(spec, grid))


LAYOUTS = {"methods_by_task": layout_methods_by_task, "sweep_rows": layout_sweep_rows,
           "sweep_by_model_task": layout_sweep_by_model_task}


def layout_table(spec: ExperimentSpec, grid: Grid, lookup: dict[CellKey, pd.Series]) -> DisplayTable:
    """The paper's layout for ``spec`` (its ``layout``) filled from ``lookup``."""
    if spec.layout not in LAYOUTS:
        raise ValueError(f"{spec.name}: no table layout {spec.layout!r}")
    return LAYOUTS[spec.layout](spec, grid, lookup)


# ---------------------------------------------------------------------------------------------------
# long form and the view against the paper

QUANTITIES = ("mem_gb", "time_h")


def long_form(spec: ExperimentSpec, grid: Grid, scale: str, lookup: dict[CellKey, pd.Series]) -> pd.DataFrame:
    """One row per (grid cell, quantity): mean, std and seeds; missing cells kept with NaN."""
    rows = []
    for model, task, method, value in grid.cells():
        row = lookup.get(grid_key(model, task, method, grid.sweep_key, value))
        for quantity in QUANTITIES + spec.extra + tuple(f"metric.{k}" for k in task_score(task).keys):
            present = row is not None and not pd.isna(row.get(f"{quantity}:mean"))
            rows.append({"table": spec.name, "scale": scale, "model": model, "task": task, "method": method,
                         "sweep_key": grid.sweep_key, "sweep_value": value,
                         "quantity": quantity.removeprefix("metric."),
                         "mean": row[f"{quantity}:mean"] if present else float("nan"),
                         "std": row.get(f"{quantity}:std") if present else float("nan"),
                         "n": int(row.get(f"{quantity}:n", 0)) if present else 0,
                         "memory_kind": ",".join(row["memory_kinds"]) if row is not None else ""})
    return pd.DataFrame(rows)


def against_paper(measured: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Cells present in both: measured mean, the paper's number and the difference."""
    keys = ["model", "task", "method", "sweep_key", "sweep_value", "quantity"]
    both = measured.dropna(subset=["mean"]).merge(paper.dropna(subset=["mean"])[keys + ["mean"]], on=keys,
                                                  how="inner", suffixes=("", "_paper"))
    both["delta"] = both["mean"] - both["mean_paper"]
    return both


def comparison_markdown(spec: ExperimentSpec, both: pd.DataFrame) -> str:
    """The side-by-side view as Markdown: one line per cell and quantity (``both`` has at least one row)."""
    head = f"# {spec.title}: measured vs. the paper\n\n"
    lines = ["| Model | Setting | Task | Quantity | Measured | Paper | Δ |", "|---|---|---|---|---|---|---|"]
    for _, r in both.iterrows():
        setting = method_display(r["method"])
        if r["sweep_key"]:
            setting += f" ({SWEEP_SYMBOL.get(r['sweep_key'], r['sweep_key'])} = {r['sweep_value']:g})"
        measured = f"{r['mean']:.3f}" + (f"±{r['std']:.3f}" if r["n"] > 1 else "")
        lines.append(f"| {model_display(r['model'])} | {setting} | {TASK_DISPLAY.get(r['task'], r['task'])} | "
                     f"{r['quantity']} | {measured} | {r['mean_paper']:.3f} | {r['delta']:+.3f} |")
    units = "mem_gb in GB, time_h in hours; scores in the records' scale, which is the paper's."
    return head + "\n".join(lines) + f"\n\n{units}\n"


# ---------------------------------------------------------------------------------------------------
# driver



def write_tables(results_dir: Path, out_dir: Path, paper_dir: Optional[Path] = DEFAULT_PAPER,
                 report: Optional[Report] = None) -> dict[str, list[Path]]:
    """Write every table with records to ``out_dir``; returns the files written per table."""
    report = report or Report()
    lookup, n_usable, failed = load_cells(results_dir, report)
    paper_lookup: dict[CellKey, pd.Series] = {}
    if paper_dir is not None and paper_dir.is_dir() and paper_dir.resolve() != results_dir.resolve():
        paper_lookup, _, _ = load_cells(paper_dir, Report(quiet=True))
    if n_usable == 0:
        report.warn(f"no usable (status ok) records under {results_dir}")
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {}
    for name in TABLES:
        spec = EXPERIMENTS[name]
        markdown, latex, longs, comparisons = [f"# {spec.title}\n"], [], [], []
        for scale, grid in (("paper", spec.paper), ("cpu", spec.cpu)):
            if not grid_has_records(grid, lookup):
                continue
            table = layout_table(spec, grid, lookup)
            heading = "Paper-scale grid" if scale == "paper" else "CPU-scale twin (stand-in models, toy task)"
            markdown += [f"\n## {heading}\n\n", to_markdown(table)]
            notes = table.notes + _common_notes(spec, grid, lookup, results_dir, failed)
            markdown += ["\n" + "\n".join(f"- {n}" for n in notes) + "\n"]
            if scale == "cpu":
                table.title += " (CPU-scale twin)"
            latex.append(to_latex(table, f"tab:{name}_{scale}"))
            measured = long_form(spec, grid, scale, lookup)
            longs.append(measured)
            if paper_lookup:
                comparisons.append(against_paper(measured, long_form(spec, grid, scale, paper_lookup)))
        if not longs:
            report.note(f"{name}: no records for its cells under {results_dir}; not written")
            continue
        files = [out_dir / f"{name}.md", out_dir / f"{name}.tex", out_dir / f"{name}.csv"]
        files[0].write_text("".join(markdown))
        files[1].write_text("\n".join(latex))
        pd.concat(longs, ignore_index=True).to_csv(files[2], index=False)
        both = pd.concat(comparisons, ignore_index=True) if comparisons else pd.DataFrame()
        view = out_dir / f"{name}_vs_paper.md"
        if not both.empty:
            files.append(view)
            view.write_text(comparison_markdown(spec, both))
        elif paper_lookup:
            # a view only where some cell is one the paper reports (same model, task, method, hyperparameters);
            # an old view in out_dir would describe other results, so it goes
            view.unlink(missing_ok=True)
            report.note(f"{name}: no cell is one the paper reports; no {view.name} written")
        written[name] = files
    keys = {grid_key(m, t, meth, g.sweep_key, v) for g in table_grids() for m, t, meth, v in g.cells()}
    for line in left_out(lookup, keys):
        report.warn(f"left out of every table: {line}")
    return written


def _common_notes(spec: ExperimentSpec, grid: Grid, lookup: dict[CellKey, pd.Series], results_dir: Path,
                  failed: dict[CellKey, list[str]]) -> list[str]:
    keys = [grid_key(m, t, meth, grid.sweep_key, v) for m, t, meth, v in grid.cells()]
    found = [lookup[k] for k in keys if k in lookup]
    seeds = sorted({int(r["n_seeds"]) for r in found})
    sources = sorted({s for r in found for s in r["sources"]})
    notes = [f"{len(found)} of {len(grid)} cells have records (from {results_dir}; source: {', '.join(sources)}); "
             f"'{MISSING}' marks a cell without one."]
    for key in keys:
        if key in failed and key not in lookup:
            model, task, method = key[:3]
            notes.append(f"Failed, shown as '{MISSING}': {model_display(model)} / {method_display(method)} / "
                         f"{TASK_DISPLAY.get(task, task)}: {'; '.join(failed[key])}.")
    protocols: dict[str, set[str]] = {}
    for key, row in ((k, lookup[k]) for k in keys if k in lookup):
        protocols.setdefault(key[1], set()).update(row.get("protocols") or [])
    used = [f"{TASK_DISPLAY.get(task, task)}: {', '.join(sorted(names))}" for task, names in protocols.items() if names]
    if used:
        notes.append(f"Evaluation protocol (task.protocol; docs/tasks.md): {'; '.join(used)}.")
    if seeds and seeds != [1]:
        notes.append(f"Cells are mean ± sample std over seeds (seeds per cell: {', '.join(map(str, seeds))}).")
    if spec.costs:
        notes.append("Time is training wall-clock including importance profiling and selection, evaluation "
                     "excluded.")
    if any(task_score(task).decimals == 3 for task in grid.tasks):
        notes.append("Accuracy and pass@1 as fractions, as hizfo.eval.metrics records them and the paper prints them.")
    return notes


def parse_cli(description: str, out_help: str, argv: Optional[list[str]]) -> tuple[Path, Path, Optional[Path]]:
    """``--results DIR --out DIR [--paper DIR|none]``, shared by analysis.paper.tables and analysis.paper.sweeps."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--results", type=Path, required=True, help="a results directory (records, any depth)")
    parser.add_argument("--out", type=Path, required=True, help=out_help)
    parser.add_argument("--paper", type=Path, default=DEFAULT_PAPER,
                        help="the paper's reference records (default results/paper); 'none' to leave them out")
    args = parser.parse_args(argv)
    return args.results, args.out, None if str(args.paper).lower() == "none" else args.paper


def main(argv: Optional[list[str]] = None) -> int:
    results, out, paper = parse_cli(__doc__.splitlines()[0], "where the tables go", argv)
    written = write_tables(results, out, paper, Report())
    if not written:
        print(f"error: nothing to tabulate: no usable record under {results} belongs to a cell of Tables 1–5",
              file=sys.stderr)
        return 1
    for name, files in written.items():
        print(f"{name}: {', '.join(str(f) for f in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
