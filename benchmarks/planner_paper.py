"""The planner's per-device peak for every cell of the paper's Table 3 and Table 1, beside the paper's "Mem. (GB)".

    nice -n 10 python benchmarks/planner_paper.py --out benchmarks/planner_paper.json

Each cell is composed as ``python run.py experiment=table3|table1 <cell>`` composes it (the presets' batch, lengths,
precision: fp32 unless a preset says otherwise) and planned at world size 1 on CUDA (hizfo/core/memory.py), once as
the preset runs it and once with precision=bf16 (the other reading of what the paper ran). GB = 1e9 bytes, as the
paper's column is labelled. The selection of Hi-ZFO and GreenTrainer is the planner's cost-only worst case.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

PAPER = Path("/work/shared/paper")
MODELS = {"opt-350m": "OPT-350M", "opt-1.3b": "OPT-1.3B", "opt-2.7b": "OPT-2.7B", "opt-6.7b": "OPT-6.7B",
          "opt-13b": "OPT-13B", "bloomz-3b": "BLOOMZ-3B", "qwen2.5-3b-instruct": "Qwen2.5-3B-Instruct"}
METHODS = {"full_ft": "Full FT", "ft_top2": "FT-Top2", "prefix": "Prefix-T", "lora": "LoRA", "mezo": "MeZO",
           "bilevel_zofo": "Bilevel-ZOFO", "greentrainer": "GT-0.7", "hizfo": "Hi-ZFO"}


def paper_rows(table: str) -> dict[tuple[str, str, str], float]:
    rows = csv.DictReader((PAPER / f"{table}.csv").open())
    return {(r["model"], r["method"], r["task"]): float(r["mem_gb"]) for r in rows if r.get("mem_gb")}


def plan_cell(overrides: list[str]) -> dict[str, Any]:
    from hizfo.core.memory import predict
    from hizfo.run.plan import PlanOptions, plan_config
    from hizfo.run.session import compose
    cfg = compose(overrides)
    shape, s, pred = plan_config(cfg, PlanOptions())
    low = predict(shape, replace(s, precision="bf16")) if s.precision != "bf16" else pred
    values = {k.split("=")[0]: k.split("=")[1] for k in overrides if "=" in k}
    return {"model": values["model"], "method": values["method"], "task": values["task"], "precision": s.precision,
            "batch": s.batch, "seq_len": s.seq_len, "peak": pred.peak, "phase": pred.peak_phase,
            "moment": pred.moment, "training": pred.training, "profiling": pred.profiling,
            "generation": pred.generation, "peak_bf16": low.peak}


def rows_of(table: str) -> list[dict[str, Any]]:
    from hizfo.run.plan import grid
    paper = paper_rows(table)
    out = []
    for cell in grid([f"experiment={table}", "logger=none"]):
        row = plan_cell(cell)
        row["table"] = table
        row["paper_gb"] = paper.get((MODELS[row["model"]], METHODS[row["method"]], row["task"]))
        out.append(row)
    return out


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    """One line per cell and the ratio's min / median / max."""
    out = ["| model | method | task | phase (moment) | predicted GB | bf16 GB | paper GB | ratio | bf16 ratio |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gb, low = r["peak"] / 1e9, r["peak_bf16"] / 1e9
        ratio = gb / r["paper_gb"] if r["paper_gb"] else float("nan")
        flag = " **>25 %**" if abs(ratio - 1) > 0.25 else ""
        out.append(f"| {r['model']} | {r['method']} | {r['task']} | {r['phase']} ({r['moment']}) | {gb:.1f} | "
                   f"{low:.1f} | {r['paper_gb']} | {ratio:.2f}{flag} | {low / r['paper_gb']:.2f} |")
    ratios = sorted(r["peak"] / 1e9 / r["paper_gb"] for r in rows if r["paper_gb"])
    out.append("")
    out.append(f"ratio predicted/paper over {len(ratios)} cells: min {ratios[0]:.2f}, median "
               f"{statistics.median(ratios):.2f}, max {ratios[-1]:.2f}; "
               f"{sum(abs(x - 1) > 0.25 for x in ratios)} cells more than 25 % off")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", choices=("table3", "table1"), action="append")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for table in args.table or ("table3", "table1"):
        start = time.perf_counter()
        rows = rows_of(table)
        results[table] = {"seconds": round(time.perf_counter() - start, 1), "rows": rows}
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"## {table} ({results[table]['seconds']} s)")
        print("\n".join(markdown(rows)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
