"""The cells of a grid, looked up in aggregated records: the cell key a grid point requires, the aggregated row of
each cell (mean / std / n over seeds), and how a task's score is read. Shared by the tables, the sweep plots and the
GPU-hours estimate."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from analysis.loading import CELL_KEYS, Report, aggregate, load_records, settle_cells
from analysis.specs import FLOPS_SHARE, SWEPT_KEYS, Grid, cell_hparams
from hizfo.tasks.catalogue import TaskScore, score_of

CellKey = tuple[Any, ...]


def key_part(value: Any) -> Any:
    """A cell key's part: None for a missing value, floats rounded so that 0.1 from a record meets 0.1 from a grid."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(value), 6) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _flops_share(partition: Any) -> float:
    value = partition.get(FLOPS_SHARE) if isinstance(partition, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def aggregate_cells(settled: pd.DataFrame) -> pd.DataFrame:
    """analysis.loading.aggregate, plus mean / std / n over seeds of the partition's backward-FLOPs share."""
    aggregated = aggregate(settled)
    if settled.empty:
        return aggregated
    frame = settled[list(CELL_KEYS)].copy()
    frame[FLOPS_SHARE] = settled["partition"].map(_flops_share).astype(float)
    grouped = frame.groupby(list(CELL_KEYS), dropna=False, sort=False)[FLOPS_SHARE]
    shares = pd.concat([grouped.mean().rename(f"{FLOPS_SHARE}:mean"), grouped.std(ddof=1).rename(f"{FLOPS_SHARE}:std"),
                        grouped.count().rename(f"{FLOPS_SHARE}:n")], axis=1).reset_index()
    # pandas matches missing keys (a method without ρ) to each other in a merge, as the groupby made them
    return aggregated.merge(shares, on=list(CELL_KEYS), how="left", validate="one_to_one")


def cell_lookup(aggregated: pd.DataFrame) -> dict[CellKey, pd.Series]:
    """Aggregated rows by cell key (model, task, method, ρ, α, r), with NaN read as 'not applicable'."""
    return {tuple(key_part(row[k]) for k in CELL_KEYS): row for _, row in aggregated.iterrows()}


def grid_key(model: str, task: str, method: str, sweep_key: Optional[str], value: Optional[float]) -> CellKey:
    """The cell key a grid point requires (swept hyperparameters at the paper's defaults unless swept)."""
    wanted = cell_hparams(method, sweep_key, value)
    return (model, task, method, *(key_part(wanted[k]) for k in SWEPT_KEYS))


def grid_has_records(grid: Grid, lookup: dict[CellKey, pd.Series]) -> bool:
    return any(grid_key(m, t, meth, grid.sweep_key, v) in lookup for m, t, meth, v in grid.cells())


def task_score(task: str) -> TaskScore:
    """How the task's score is read and shown; a task the catalogue lacks is refused (one line)."""
    return score_of(task)


def load_cells(results_dir: Path, report: Report) -> tuple[dict[CellKey, pd.Series], int, dict[CellKey, list[str]]]:
    """The aggregated cells of a results directory, how many ok records fed them, and failed runs by cell."""
    frame = load_records(results_dir, report)
    settled = settle_cells(frame, report)
    failed: dict[CellKey, list[str]] = {}
    if not frame.empty:
        for _, row in frame[frame["status"] == "failed"].iterrows():
            key = tuple(key_part(row[k]) for k in CELL_KEYS)
            failed.setdefault(key, []).append(f"{row['error'] or 'failed'} ({row['path']})")
    return cell_lookup(aggregate_cells(settled)), len(settled), failed
