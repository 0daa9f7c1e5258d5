"""Which records the paper's tables (analysis.paper.tables) leave out, and why: a record whose model × task no
table has (an ad-hoc task such as pydoc), or whose method or hyperparameters no table's grid holds.
``analysis.compare`` tables any records; this module only names what the fixed templates cannot show."""
from __future__ import annotations

from typing import Any

import pandas as pd

from analysis.paper.experiments import EXPERIMENTS, TABLES
from analysis.specs import Grid


def table_grids() -> list[Grid]:
    """Every grid (paper scale and CPU twin) of Tables 1–5."""
    return [grid for name in TABLES for grid in (EXPERIMENTS[name].paper, EXPERIMENTS[name].cpu)]


def left_out(lookup: dict[tuple[Any, ...], pd.Series], grid_keys: set[tuple[Any, ...]]) -> list[str]:
    """One line per cell with records that no table shows: its records and why (``grid_keys``: every cell key the
    tables' grids hold, as ``analysis.cells.grid_key`` builds them)."""
    pairs = {(model, task) for grid in table_grids() for model in grid.models for task in grid.tasks}
    lines = []
    for key, row in sorted(lookup.items(), key=lambda item: tuple(map(str, item[0]))):
        if key in grid_keys:
            continue
        model, task, method = key[:3]
        why = (f"no table has {model} × {task}" if (model, task) not in pairs
               else f"no table's grid has {method} with these hyperparameters")
        files = ", ".join(map(str, row.get("files") or []))
        lines.append(f"{model}/{task}/{method}: {why} ({files}); python -m analysis.compare tables any records")
    return lines
