"""What each paper-scale preset costs, estimated from the paper's own Time (h) and Mem. (GB) columns.

    python -m analysis.paper.gpu_hours [--paper results/paper] [--gpu-memory 80]

Assumptions (printed with the table): training time only, evaluation excluded (the paper's Time column);
a job needs ceil(Mem / GPU memory) GPUs of the paper's kind (H100 80 GB), and holds them all for its Time;
a cell whose time the paper does not report is estimated from the run it varies (r and α leave a step's
work unchanged, so Figure 3/4 and Table 5's α = 0 runs cost what the default Hi-ZFO run costs). Table 2
reports no time at all, so it gets no estimate.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Optional

import pandas as pd

from analysis.cells import grid_key, load_cells
from analysis.loading import Report
from analysis.paper.experiments import EXPERIMENTS
from analysis.paper.tables import DEFAULT_PAPER


def preset_costs(paper_dir: Path = DEFAULT_PAPER, gpu_memory_gb: float = 80.0) -> pd.DataFrame:
    """One row per paper-scale preset: runs, runs with a known or estimated time, job-hours and GPU-hours."""
    lookup, _, _ = load_cells(paper_dir, Report(quiet=True))
    rows = []
    for name, spec in EXPERIMENTS.items():
        grid = spec.paper
        job_hours = gpu_hours = 0.0
        known = estimated = 0
        for model, task, method, value in grid.cells():
            row = lookup.get(grid_key(model, task, method, grid.sweep_key, value))
            origin = "reported"
            if (row is None or pd.isna(row.get("time_h:mean"))) and grid.sweep_key in ("alpha", "lr_ratio"):
                row = lookup.get(grid_key(model, task, method, None, None))   # the default run it varies
                origin = "estimated"
            if row is None or pd.isna(row.get("time_h:mean")):
                continue
            hours, memory = row["time_h:mean"], row.get("mem_gb:mean")
            gpus = max(1, math.ceil(memory / gpu_memory_gb)) if not pd.isna(memory) else 1
            job_hours += hours
            gpu_hours += hours * gpus
            known += origin == "reported"
            estimated += origin == "estimated"
        rows.append({"preset": name, "runs": len(grid), "time_reported": known, "time_estimated": estimated,
                     "job_hours": round(job_hours, 2) if known + estimated else None,
                     "gpu_hours": round(gpu_hours, 2) if known + estimated else None})
    return pd.DataFrame(rows)


def as_markdown(costs: pd.DataFrame, gpu_memory_gb: float) -> str:
    """The cost table for experiments/README.md."""
    lines = ["| preset | runs | Time reported / estimated / unknown | Σ Time (job-hours) | "
             f"GPU-hours (ceil(Mem/{gpu_memory_gb:g} GB) GPUs a job) |", "|---|---|---|---|---|"]
    for _, r in costs.iterrows():
        unknown = r["runs"] - r["time_reported"] - r["time_estimated"]
        hours = "not reported" if r["job_hours"] is None or pd.isna(r["job_hours"]) else f"{r['job_hours']:.1f}"
        gpu = "not reported" if r["gpu_hours"] is None or pd.isna(r["gpu_hours"]) else f"{r['gpu_hours']:.1f}"
        lines.append(f"| {r['preset']} | {r['runs']} | {r['time_reported']} / {r['time_estimated']} / {unknown} | "
                     f"{hours} | {gpu} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper", type=Path, default=DEFAULT_PAPER)
    parser.add_argument("--gpu-memory", type=float, default=80.0, help="GB per GPU (H100: 80)")
    args = parser.parse_args(argv)
    costs = preset_costs(args.paper, args.gpu_memory)
    print(as_markdown(costs, args.gpu_memory), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
