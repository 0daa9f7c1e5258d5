"""The planner against the committed MemTracker traces and real-allocation cells, as markdown tables.

    python benchmarks/planner_report.py    (reads benchmarks/planner_traces.json, planner_alloc.json, planner_dist.json)

Categories side by side (MemTracker / planner, MiB): PARAM / weights, GRAD / grads, OPT / optimizer (MemTracker's OPT
also holds the AdamW step's temporaries), OTH / masters (the fp32 masters passed to track_external), ACT + TEMP /
activations + temporaries + ZO buffers. The planner runs with threads=0 (no worker-thread noise chunks: MemTracker's
dispatch mode is thread-local and cannot see them).
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
MiB = float(1 << 20)


def _setting(cell: dict[str, Any]) -> Any:
    from hizfo.core.memory import Setting
    return Setting(method=cell["method"], method_cfg=(), precision=cell["precision"], batch=cell["batch"],
                   seq_len=cell["seq_len"], device="cpu", threads=0)


def trace_rows(cells: list[dict[str, Any]]) -> tuple[list[str], dict[str, float]]:
    from benchmarks.planner_traces import shape_of
    from hizfo.core.memory import predict
    shapes: dict[str, Any] = {}
    worst: dict[str, float] = defaultdict(float)
    out = ["| shape | method | precision | MemTracker MiB | predicted MiB | ratio | PARAM/weights | GRAD/grads | "
           "OPT/optimizer | OTH/masters | ACT+TEMP / act+tmp+zo | planner's moment |", "|" + "---|" * 12]
    for c in cells:
        shape = shapes.setdefault(c["shape"], shape_of(c["shape"]))
        p, k = predict(shape, _setting(c)), c["peak"]
        t = p.training
        ratio = p.training_peak / k["Total"]
        worst[c["method"]] = max(worst[c["method"]], abs(ratio - 1))
        rest = t["activations"] + t["temporaries"] + t["zo_buffers"]
        pairs = [(k["PARAM"], t["weights"]), (k["GRAD"], t["grads"]), (k["OPT"], t["optimizer"]),
                 (k["OTH"], t["masters"]), (k["ACT"] + k["TEMP"], rest)]
        out.append(f"| {c['shape']} | {c['method']} | {c['precision']} | {k['Total'] / MiB:.1f} | "
                   f"{p.training_peak / MiB:.1f} | {ratio:.2f} | " +
                   " | ".join(f"{a / MiB:.1f} / {b / MiB:.1f}" for a, b in pairs) + f" | {p.moment} |")
    return out, dict(worst)


def alloc_rows(cells: list[dict[str, Any]]) -> list[str]:
    from benchmarks.planner_traces import shape_of
    from hizfo.core.memory import predict
    shape = shape_of("tiny-opt")
    out = ["| method | precision | alive before the step MiB | real peak MiB | predicted MiB | ratio |",
           "|---|---|---|---|---|---|"]
    for c in cells:
        p = predict(shape, _setting(c))
        out.append(f"| {c['method']} | {c['precision']} | {c['before_step'] / MiB:.2f} | {c['peak'] / MiB:.2f} | "
                   f"{p.training_peak / MiB:.2f} | {p.training_peak / c['peak']:.2f} |")
    return out


def dist_rows(cells: list[dict[str, Any]]) -> list[str]:
    """benchmarks/planner_dist.py's cells (rank 0 of N under FSDP2) against the planner at that world size."""
    from dataclasses import replace
    from benchmarks.planner_traces import shape_of
    from hizfo.core.memory import predict
    shape = shape_of("tiny-opt")
    out = ["| phase | method | precision | world size | profile on the shards | real peak MiB | predicted MiB | "
           "ratio |", "|---|---|---|---|---|---|---|---|"]
    for c in cells:
        n = c["world_size"]
        s = replace(_setting(c), world_size=n, fsdp=n > 1, profile_shards=bool(c.get("profile_shards")))
        p = predict(shape, s)
        predicted = p.training_peak if c["kind"] == "step" else p.profiling
        shards = ("yes" if c["profile_shards"] else "no") if c["kind"] == "profile" and n > 1 else "–"
        out.append(f"| {'training step' if c['kind'] == 'step' else 'profile'} | {c['method']} | {c['precision']} | "
                   f"{n} | {shards} | {c['peak'] / MiB:.2f} | {predicted / MiB:.2f} | {predicted / c['peak']:.2f} |")
    return out


def main() -> int:
    torch.set_num_threads(1)
    traces = json.loads((HERE / "planner_traces.json").read_text())["cells"]
    rows, worst = trace_rows(traces)
    print("\n".join(rows))
    print("\nlargest |predicted/traced - 1| per method: " +
          ", ".join(f"{m} {100 * v:.0f} %" for m, v in sorted(worst.items())))
    print()
    print("\n".join(alloc_rows(json.loads((HERE / "planner_alloc.json").read_text())["cells"])))
    if (HERE / "planner_dist.json").exists():
        print()
        print("\n".join(dist_rows(json.loads((HERE / "planner_dist.json").read_text())["cells"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
