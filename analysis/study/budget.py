"""The study's machine, budget and scale, read off its records, for report.md.

Each record's provenance says where it ran (device, CPU count, torch threads) and when its model had loaded
(``created``); its costs say how long it then ran (training + evaluation + setup). A run is the interval
[created, created + those seconds]. Runs closer than ``SITTING_GAP`` to the runs before them belong to the same
*sitting* (one relaunch of the study driver, whose runs follow each other within seconds); the study's wall-clock
is the sum over sittings of first start to last end, so the hours between sittings are not counted. Model loading
before ``created`` is left out (a few seconds a run).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterable, Optional

import pandas as pd

from analysis.specs import METHOD_DISPLAY

SITTING_GAP = timedelta(minutes=5)
# the paper's scale (Hi-ZFO paper, §4.1 and Appendix A.2): what a verdict at this study's scale is set beside
PAPER_SCALE = ("OPT-350M to OPT-13B, BLOOM-3B, Qwen2-7B and Qwen2.5-3B-Instruct on NVIDIA H100 GPUs; the tasks' "
               "training sets (thousands of examples), batch 4 or 32, Hi-ZFO 3 epochs and the baselines 5")


@dataclass(frozen=True)
class Budget:
    """What the study's runs cost: runs, run time, wall-clock over its sittings, and the per-run spread."""
    runs: int
    run_hours: float
    wall_hours: float
    sittings: int
    first_start: datetime
    last_end: datetime
    median_minutes: float
    shortest_minutes: float
    longest_minutes: float


def study_budget(frame: pd.DataFrame) -> Optional[Budget]:
    """The budget of the runs in ``frame`` (rows with ``created`` and ``run_seconds``); None when none has both."""
    runs = []
    for created, seconds in zip(frame["created"], frame["run_seconds"]):
        if seconds is None or pd.isna(seconds):
            continue
        try:
            start = datetime.fromisoformat(str(created))
        except ValueError:
            continue
        runs.append((start, start + timedelta(seconds=float(seconds)), float(seconds)))
    if not runs:
        return None
    runs.sort()
    sittings: list[list[datetime]] = []
    for start, end, _ in runs:
        if sittings and start - sittings[-1][1] < SITTING_GAP:
            sittings[-1][1] = max(sittings[-1][1], end)
        else:
            sittings.append([start, end])
    minutes = [seconds / 60 for *_, seconds in runs]
    return Budget(runs=len(runs), run_hours=sum(minutes) / 60,
                  wall_hours=sum((end - start).total_seconds() for start, end in sittings) / 3600,
                  sittings=len(sittings), first_start=runs[0][0], last_end=max(end for _, end, _ in runs),
                  median_minutes=statistics.median(minutes), shortest_minutes=min(minutes),
                  longest_minutes=max(minutes))


def _shown(values: Iterable[Any]) -> str:
    """The distinct values, sorted and joined ("?" when there is none); whole floats without ".0"."""
    shown = sorted({str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
                    for v in values if v is not None and not pd.isna(v)})
    return ", ".join(shown) or "?"


def _values(frame: pd.DataFrame, column: str) -> str:
    return _shown(frame[column]) if column in frame.columns else "?"


def _provenance(frame: pd.DataFrame, key: str) -> str:
    """One provenance field over the runs (analysis.loading keeps each record's provenance in its row)."""
    if "provenance" not in frame.columns:
        return "?"
    return _shown(p.get(key) if isinstance(p, dict) else None for p in frame["provenance"])


def evaluated_examples(path: str) -> Optional[int]:
    """How many evaluation examples a run scored: the rows of its predictions file (hizfo.run.predictions)."""
    predictions = Path(path).with_suffix(".predictions.jsonl")
    if not predictions.is_file():
        return None
    with predictions.open() as handle:
        return sum(1 for line in handle if line.strip())


def scale_lines(frame: pd.DataFrame) -> list[str]:
    """Per (model, task): batch, steps per epoch, epochs and steps per method, evaluation examples."""
    lines = []
    for (model, task), group in frame.groupby(["model_name", "task"], sort=True):
        trained = group[group["steps"].fillna(0) > 0]
        per_method = []
        for method, rows in trained.groupby("method", sort=True):
            per_method.append(f"{METHOD_DISPLAY.get(method, method)} {_values(rows, 'epochs')} epochs = "
                              f"{_values(rows, 'steps')} steps")
        evaluated = sorted({n for n in (evaluated_examples(p) for p in group["path"]) if n is not None})
        batch, per_epoch = _values(trained, "batch_size"), _values(trained, "steps_per_epoch")
        one_each = batch.isdigit() and per_epoch.isdigit()        # one batch size and one epoch length
        most = f" (at most {int(batch) * int(per_epoch)} training examples)" if one_each else ""
        lines.append(f"- {task} on {model}: batch {batch}, {per_epoch} steps an epoch{most}; "
                     f"{'; '.join(per_method) or 'no trained run'}; "
                     f"{', '.join(map(str, evaluated)) or '?'} evaluation examples a run.")
    return lines


def model_lines(frame: pd.DataFrame) -> list[str]:
    """What weights the runs loaded (the records' model config): a GGUF file is a quantised copy, dequantised to the
    model's dtype when it loads, so the trained model is that copy, not the original checkpoint."""
    if "model_hub_id" not in frame.columns:
        return []
    lines = []
    for (hub, gguf, dtype), rows in frame.groupby(["model_hub_id", "model_gguf_file", "model_dtype"], sort=True,
                                                   dropna=False):
        if gguf is None or pd.isna(gguf):
            continue
        quant = f" ({gguf.rsplit('.', 2)[-2]} quantisation)" if str(gguf).count(".") >= 2 else ""
        lines.append(f"Model (the records' config, {len(rows)} runs): the GGUF file `{gguf}`{quant} of `{hub}`, "
                     f"dequantised to {dtype} when it loads: the weights trained are that quantised copy's, not the "
                     f"original checkpoint's.")
    return lines + [""] if lines else []


def budget_section(frame: pd.DataFrame) -> list[str]:
    """report.md's "Machine, budget and scale" section."""
    lines = ["## Machine, budget and scale", ""]
    machine = (f"device {_provenance(frame, 'device')} ({_provenance(frame, 'device_name')}), "
               f"{_provenance(frame, 'cpu_count')} CPUs, {_provenance(frame, 'num_threads')} torch thread(s) a run, "
               f"host {_provenance(frame, 'hostname')}")
    cpu = _provenance(frame, "cpu_model")
    cpu = ("CPU model not recorded (these records predate provenance's `cpu_model`)" if cpu == "?" else
           f"CPU model {cpu}")
    lines += [f"Machine (the records' provenance): {machine}; {cpu}.", ""] + model_lines(frame)
    budget = study_budget(frame)
    if budget is not None:
        lines += [f"Budget: {budget.runs} runs, {budget.run_hours:.1f} h of run time (training + evaluation), "
                  f"{budget.wall_hours:.1f} h of wall-clock over {budget.sittings} sittings "
                  f"({budget.first_start:%Y-%m-%d %H:%M} to {budget.last_end:%Y-%m-%d %H:%M} UTC; a gap of more "
                  f"than {int(SITTING_GAP.total_seconds() // 60)} min between runs starts a new sitting, and the "
                  f"gaps are not counted). Per run: median {budget.median_minutes:.1f} min, shortest "
                  f"{budget.shortest_minutes:.1f}, longest {budget.longest_minutes:.1f}.", ""]
    lines += ["Scale of this study:", ""] + scale_lines(frame) + ["", f"The paper's scale: {PAPER_SCALE}.", ""]
    return lines
