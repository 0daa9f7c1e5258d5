"""The second CPU study's budget: the plan it was sized by, against what its runs took (report.md's "Plan against
actual" section).

The plan per run, in minutes, as the preset and the committed pilot stated it before the study's first record
(conf/experiment/smollm2_study2_cpu.yaml "Budget"; results/smollm2_cpu_study2/pilots/README.md):

* pydoc: study 1's measured medians on its Xeon (Full FT 19.0, ZO-off 10.6, Hi-ZFO 13.6), Hi-ZFO's ZO part taken at
  2.5× under AdamW: 10.6 + 2.5 × (13.6 − 10.6) = 18.1 for every AdamW arm;
* wordnet_revdict: the pilots' wall-clock on this study's CPU at 256 training rows, training scaled to 192 rows
  (evaluation and loading fixed); arms not piloted take a piloted arm's time (Hi-ZFO-AdamW's for the other Hi-ZFO arms,
  Full FT's for LoRA).

A run's actual minutes are its record's setup + training + evaluation seconds (model loading, a few seconds, is left
out). The study's wall-clock is analysis.study.budget's (sittings, gaps not counted).
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Optional

import pandas as pd

from analysis.study.budget import study_budget
from analysis.study.study2 import arm_rows
from analysis.study.study2_spec import ARMS

WORKERS = 2
STUDY1_RUNS = Path("results/smollm2_cpu/runs")                # study 1's records (an AMX-BF16 Xeon)
CODE_COMMIT = "41f457d1fe39a5aa7c73c5e4a260971b52e1db1f"     # the rules' commit (its wordnet sizing), first record after
_ADAMW_PYDOC = 10.6 + 2.5 * (13.6 - 10.6)
_PILOT = {  # minutes at 192 rows: (wall − train) + train × 192/256, from the pilots' records and /usr/bin/time
    "full_ft": (644.94 - 514.0 + 514.0 * 0.75) / 60, "hizfo_adamw": (606.0 - 509.0 + 509.0 * 0.75) / 60,
    "greentrainer": (398.97 - 272.0 + 272.0 * 0.75) / 60, "mezo": (839.39 - 710.03 + 710.03 * 0.75) / 60,
    "zero_shot": 45.31 / 60,
}
PLANNED_MINUTES: dict[str, float] = {
    "pd_full_ft": 19.0, "pd_hizfo_zo_off": 10.6, "s2_pd_hizfo_adamw": _ADAMW_PYDOC,
    "s2_pd_hizfo_random_dir_adamw": _ADAMW_PYDOC, "s2_pd_hizfo_adamw_r0.3": _ADAMW_PYDOC,
    "s2_pd_hizfo_adamw_r0.5": _ADAMW_PYDOC, "s2_pd_hizfo_adamw_r0.7": _ADAMW_PYDOC,
    "s2_wn_zero_shot": _PILOT["zero_shot"], "s2_wn_full_ft": _PILOT["full_ft"], "s2_wn_lora": _PILOT["full_ft"],
    "s2_wn_mezo": _PILOT["mezo"], "s2_wn_greentrainer": _PILOT["greentrainer"],
    **{name: _PILOT["hizfo_adamw"] for name in ("s2_wn_hizfo", "s2_wn_hizfo_adamw", "s2_wn_hizfo_zo_off",
                                                "s2_wn_hizfo_random_dir", "s2_wn_hizfo_random_dir_adamw")},
}


def _minutes(row: pd.Series) -> Optional[float]:
    seconds = row.get("run_seconds")
    return None if seconds is None or pd.isna(seconds) else float(seconds) / 60


def plan_section(frame: pd.DataFrame) -> list[str]:
    """Per arm: planned minutes a run and runs, the runs done and their median minutes; then the totals."""
    lines = ["## Plan against actual", "",
             f"The plan (analysis/study/study2_plan.py, stated before the first record) against the records; wall "
             f"hours assume {WORKERS} workers side by side.", "",
             "| arm | runs planned | plan min/run | runs done | actual median min/run | actual / plan |",
             "| --- | --- | --- | --- | --- | --- |"]
    planned_total = done_planned = done_actual = 0.0
    for arm in ARMS:
        plan = PLANNED_MINUTES[arm.name]
        minutes = [m for m in (_minutes(r) for r in arm_rows(frame, arm).values()) if m is not None]
        planned_total += plan * arm.seeds
        done_planned, done_actual = done_planned + plan * len(minutes), done_actual + sum(minutes)
        median = statistics.median(minutes) if minutes else None
        lines.append(f"| {arm.name} | {arm.seeds} | {plan:.1f} | {len(minutes)} | "
                     f"{'–' if median is None else f'{median:.1f}'} | "
                     f"{'–' if median is None else f'{median / plan:.2f}'} |")
    budget = study_budget(frame)
    wall = f"{budget.wall_hours:.1f} h of wall-clock so far" if budget else "no wall-clock yet"
    lines += ["", f"Planned: {planned_total / 60:.1f} worker-hours, {planned_total / 60 / WORKERS:.1f} h of wall-clock "
              f"with {WORKERS} workers (the preset's budget: 8 h, and 2 h more where study 1's reused runs must be "
              f"rerun on another CPU model, as here). Done: the runs so far took {done_actual / 60:.1f} worker-hours "
              f"against {done_planned / 60:.1f} planned for them ({wall}).", ""]
    return lines


def _study1_twin(path: str, results_dir: Path) -> Optional[dict]:
    """Study 1's record at the same place under its runs folder, if it exists."""
    try:
        twin = STUDY1_RUNS / Path(path).relative_to(results_dir)
        return json.loads(twin.read_text())
    except (ValueError, OSError):
        return None


def rerun_section(frame: pd.DataFrame, results_dir: str | Path) -> list[str]:
    """Study 1's arms rerun here (``reused`` arms: another CPU model, so rerun, not reused): per arm, how many seeds
    end with study 1's final weights bit for bit (``final_params_sha256``) and its scores."""
    lines = ["## Study 1's arms, rerun on this CPU", "",
             "Study 1's records are not reused (another CPU model: an AMX-BF16 Xeon); its two pydoc arms are rerun. "
             "Set beside study 1's record of the same arm and seed:", ""]
    for arm in (a for a in ARMS if a.reused):
        rows = arm_rows(frame, arm)
        same = scores = 0
        for row in rows.values():
            mine, twin = json.loads(Path(row["path"]).read_text()), _study1_twin(row["path"], Path(results_dir))
            if twin is None:
                continue
            same += mine.get("final_params_sha256") == twin.get("final_params_sha256") is not None
            scores += mine.get("metrics") == twin.get("metrics")
        lines.append(f"- {arm.name}: {len(rows)} seeds rerun; {same} with study 1's final weights bit for bit, "
                     f"{scores} with its scores exactly.")
    return lines + [""]
