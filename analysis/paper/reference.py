"""Turn the paper's reported numbers (results/paper/source/*.csv) into results records under results/paper/.

    python -m analysis.paper.reference [--out results/paper]

The CSVs in results/paper/source/ are the paper's Tables 1–5 and the points it quotes from Figures 3–4, cell for
cell; they are the repository's own copy and the only input this script reads. One record per cell, in the
layout of hizfo.run.records, with status "ok" and provenance {"source": "paper"}.
A cell the paper reports in several places (Table 1's OPT-2.7B rows are Table 3's; Table 4's ρ = 0.6 and
Table 5's α = 0.1 are the default Hi-ZFO run) becomes one record, and the script fails if the copies
disagree. The generated records are committed too, so analysis needs nothing outside results/.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from analysis.specs import ALPHA_MODE_METHODS, METHOD_ALIASES, MODEL_ALIASES, SWEPT_DEFAULTS, SWEPT_KEYS
from hizfo.run.runspec import derive_variant

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "results" / "paper"
SOURCE = DEFAULT_OUT / "source"      # the paper's numbers, kept in the repository: edit a cell there, then rerun
SOURCE_FILES = ("table1.csv", "table2.csv", "table3.csv", "table4.csv", "table5.csv", "figures.csv")
PAPER = "Jin & Tan, Hi-ZFO, Findings of ACL 2026 (arXiv 2601.05501)"
MEMORY_KIND = "paper_reported"      # the paper's Mem. (GB): GPU memory on H100s, measured how it does not say
_SCORES_PERCENT = {"rouge1": "rouge1", "rouge2": "rouge2", "rougeL": "rougeL"}
# Table 2 reports fractions (0.810), the scale hizfo.eval.metrics gives accuracy and pass@1 in
_TABLE2_COLUMNS = {"gsm8k_acc": ("gsm8k", "accuracy"), "math500_acc": ("math500", "accuracy"),
                   "humaneval_pass1": ("humaneval", "pass@1")}


@dataclass
class PaperCell:
    """The numbers the paper gives for one (model, task, method, ρ, α, r), merged over its tables."""
    model: str
    task: str
    method: str
    swept: dict[str, Optional[float]]
    metrics: dict[str, float] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)


def _value(raw: Any) -> Optional[float]:
    if raw is None or (isinstance(raw, float) and math.isnan(raw)) or raw == "":
        return None
    return float(raw)


class PaperCells:
    """Cells keyed by (model, task, method, ρ, α, r); a second source for a cell must agree with the first."""

    def __init__(self) -> None:
        self.cells: dict[tuple, PaperCell] = {}

    def add(self, model_display: str, method_display: str, task: str, source: str, *,
            swept: Optional[dict[str, float]] = None, metrics: Optional[dict[str, Optional[float]]] = None,
            costs: Optional[dict[str, Optional[float]]] = None) -> None:
        """Merge one source row into its cell."""
        model, method = MODEL_ALIASES[model_display], METHOD_ALIASES[method_display]
        values: dict[str, Optional[float]] = {key: None for key in SWEPT_KEYS}
        values.update(SWEPT_DEFAULTS.get(method, {}))
        values.update(swept or {})
        key = (model, task, method, *(values[k] for k in SWEPT_KEYS))
        cell = self.cells.setdefault(key, PaperCell(model, task, method, values))
        for target, new in ((cell.metrics, metrics or {}), (cell.costs, costs or {})):
            for name, number in new.items():
                if number is None:
                    continue
                if name in target and not math.isclose(target[name], number, rel_tol=0, abs_tol=1e-9):
                    raise ValueError(f"the paper disagrees with itself on {key} {name}: {target[name]} "
                                     f"({', '.join(cell.sources)}) vs {number} ({source})")
                target[name] = number
        if source not in cell.sources:
            cell.sources.append(source)


def read_figures_csv(path: Path) -> list[dict[str, str]]:
    """figures.csv's rows; its last column (note) holds unquoted commas, so it takes the rest of the line."""
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    return [dict(zip(header, line.split(",", len(header) - 1))) for line in lines[1:] if line.strip()]


def collect_cells(source_dir: Path) -> PaperCells:
    """Every cell of Tables 1–5 and Figures 3–4, from the CSVs in ``source_dir``."""
    cells = PaperCells()
    for table in ("table1", "table3"):
        for row in pd.read_csv(source_dir / f"{table}.csv").to_dict("records"):
            scores = ({"exact_match": _value(row["acc"])} if row["task"] == "webquestions"
                      else {k: _value(row[c]) for c, k in _SCORES_PERCENT.items()})
            cells.add(row["model"], row["method"], row["task"], table, metrics=scores,
                      costs={"mem_gb": _value(row["mem_gb"]), "time_h": _value(row["time_h"])})
    for row in pd.read_csv(source_dir / "table2.csv").to_dict("records"):
        for column, (task, metric) in _TABLE2_COLUMNS.items():
            cells.add(row["model"], row["method"], task, "table2",
                      metrics={metric: float(row[column])})
    for row in pd.read_csv(source_dir / "table4.csv").to_dict("records"):
        cells.add(row["model"], "Hi-ZFO", row["task"], "table4", swept={"rho": float(row["rho"])},
                  metrics={k: _value(row[c]) for c, k in _SCORES_PERCENT.items()},
                  costs={"mem_gb": _value(row["mem_gb"]), "time_h": _value(row["time_h"])})
    for row in pd.read_csv(source_dir / "table5.csv").to_dict("records"):
        scores = ({"exact_match": _value(row["acc"])} if row["task"] == "webquestions"
                  else {k: _value(row[c]) for c, k in _SCORES_PERCENT.items()})
        cells.add(row["model"], row["variant"], row["task"], "table5", swept={"alpha": float(row["alpha"])},
                  metrics=scores)
    for row in read_figures_csv(source_dir / "figures.csv"):
        cells.add(row["model"], "Hi-ZFO", row["task"], row["figure"], swept={row["x_name"]: float(row["x"])},
                  metrics={row["metric"]: _value(row["value"])})
    return cells


def variant_of(cell: PaperCell) -> str:
    """The variant run.py would give the run: the swept values that differ from the paper's defaults."""
    defaults = SWEPT_DEFAULTS.get(cell.method, {})
    return derive_variant(f"method.{key}={cell.swept[key]}" for key in SWEPT_KEYS
                          if key in defaults and cell.swept[key] is not None and cell.swept[key] != defaults[key])


def build_paper_record(cell: PaperCell) -> dict[str, Any]:
    """A results record (hizfo.run.records layout) holding the paper's numbers for one cell."""
    from hizfo.run.records import Costs, RunRecord
    from hizfo.run.runspec import config_hash
    method_cfg = {"name": cell.method, **{k: v for k, v in cell.swept.items() if v is not None}}
    if cell.method in ALPHA_MODE_METHODS:
        method_cfg["alpha_mode"] = "update"    # the reading the paper's statements on α hold under (docs/design.md)
    config = {"model": {"name": cell.model}, "task": {"name": cell.task}, "method": method_cfg,
              "seed": 0, "variant": variant_of(cell), "experiment": cell.sources[0]}
    hours = cell.costs.get("time_h")
    costs = Costs(peak_memory_gb=cell.costs.get("mem_gb"), memory_kind=MEMORY_KIND if "mem_gb" in cell.costs else None,
                  train_seconds=hours * 3600 if hours is not None else None)
    provenance = {"source": "paper", "paper": PAPER, "tables": cell.sources,
                  "note": "reported numbers, not a run; time is the paper's Time (h) in seconds"}
    return RunRecord(status="ok", config=config, config_hash=config_hash(config), metrics=dict(cell.metrics),
                     costs=costs, provenance=provenance).to_json()


def write_paper_records(source_dir: Path, out_dir: Path) -> list[Path]:
    """Regenerate every paper record under ``out_dir`` (old records there are removed first)."""
    from hizfo.run.records import read_record, write_json_atomic
    from hizfo.run.runspec import record_path
    cells = collect_cells(source_dir)
    for old in out_dir.rglob("seed*.json"):      # only records this script wrote: a wrong --out is left alone
        if (read_record(old) or {}).get("provenance", {}).get("source") == "paper":
            old.unlink()
    for folder in sorted((p for p in out_dir.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(folder.iterdir()):
            folder.rmdir()
    written = []
    for cell in cells.cells.values():
        path = record_path(out_dir, cell.model, cell.task, cell.method, variant_of(cell), 0)
        write_json_atomic(path, build_paper_record(cell))
        written.append(path)
    return written


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the records go (default results/paper)")
    args = parser.parse_args(argv)
    missing = [name for name in SOURCE_FILES if not (SOURCE / name).exists()]
    if missing:
        print(f"error: {SOURCE}: {', '.join(missing)} missing (the repository's copy of the paper's tables)",
              file=sys.stderr)
        return 2
    written = write_paper_records(SOURCE, args.out)
    print(f"wrote {len(written)} paper records under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
