"""Read a results directory into one pandas row per record, skipping bad files loudly, and settle cells.

A *cell* is what a table shows in one place: (model label, task, method, ρ, α, r). Several records may
claim it: seeds (averaged), the same config run twice under two variant names (counted once), or two
different configs (a conflict: the newest config is used, the others are named and set aside).
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from analysis.specs import LABEL_RUN_KEYS, SWEPT_DEFAULTS, SWEPT_KEYS, method_label
from hizfo.config import TASK_PROTOCOLS
from hizfo.errors import ConfigError
from hizfo.run.records import RunRecord
from hizfo.run.runspec import cell_key, is_reporting, parse_variant

CELL_KEYS: tuple[str, ...] = ("model", "task", "method", "rho", "alpha", "lr_ratio")


@dataclass
class Report:
    """Warnings and notes met while reading; each is printed once, on one line, as it happens."""
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    quiet: bool = False

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        if not self.quiet:
            print(f"warning: {message}", file=sys.stderr)

    def note(self, message: str) -> None:
        self.notes.append(message)
        if not self.quiet:
            print(f"note: {message}", file=sys.stderr)


def model_label(model_name: str, variant: Optional[str]) -> str:
    """The model's name, plus the ``model.*`` overrides the run's variant carries (a sweep over widths), and a
    ``precision`` other than the default (Table 2's bf16-mixed twin sits apart from Table 1's fp32 cells)."""
    # a reporting model key (model.path, ...) says where the weights come from, not which model it is
    extra = [f"{key[len('model.'):]}={value}" for key, value in parse_variant(variant)
             if key.startswith("model.") and not is_reporting(key)]
    extra += [f"{key}={value}" for key, value in parse_variant(variant) if key in LABEL_RUN_KEYS]
    return f"{model_name} ({', '.join(sorted(extra))})" if extra else model_name


def semantic_key(config: dict[str, Any]) -> str:
    """What a run computed up to its seed (hizfo.run.runspec.cell_key): the seeds of one cell share it."""
    return cell_key(config)


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def swept_values(method: str, method_cfg: dict[str, Any]) -> dict[str, Optional[float]]:
    """The record's ρ / α / r where the method has them (r = zo_lr / lr when zo_lr is set), else None."""
    applicable = SWEPT_DEFAULTS.get(method, {})
    values: dict[str, Optional[float]] = {key: None for key in SWEPT_KEYS}
    for key in applicable:
        value = _number(method_cfg.get(key))
        if key == "lr_ratio" and _number(method_cfg.get("zo_lr")) is not None and _number(method_cfg.get("lr")):
            value = _number(method_cfg["zo_lr"]) / _number(method_cfg["lr"])
        values[key] = round(value, 6) if value is not None else None
    return values


def _steps_per_epoch(curve: Any) -> Optional[float]:
    """The step of the first epoch's end in a record's curve (its epoch-end evaluations), if it has one."""
    entries = curve.get("eval") if isinstance(curve, dict) else getattr(curve, "eval", None)
    for entry in entries or []:
        if entry.get("epoch") == 0 and _number(entry.get("step")):
            return _number(entry["step"])
    return None


# what a record of a task with evaluation protocols says when it predates ``task.protocol``: it ran the settings
# that ``task.protocol=normalized`` keeps (docs/tasks.md, "Evaluation protocols")
LEGACY_PROTOCOL = "normalized (before task.protocol)"


def task_protocols(task: str) -> tuple[str, ...]:
    """The evaluation protocols a task offers (hizfo.config.TASK_PROTOCOLS); () for a task with one."""
    return tuple(TASK_PROTOCOLS.get(task, ()))


def record_protocol(task_config: dict[str, Any]) -> Optional[str]:
    """The evaluation protocol a record's task ran under; None for a task with one protocol."""
    if "protocol" in task_config:
        return task_config["protocol"]
    return LEGACY_PROTOCOL if task_protocols(str(task_config.get("name"))) else None


def _run_seconds(costs: Any) -> Optional[float]:
    parts = [_number(costs.setup_seconds), _number(costs.train_seconds), _number(costs.eval_seconds)]
    return None if parts[1] is None else sum(p for p in parts if p is not None)


def _row(path: Path, record: RunRecord) -> dict[str, Any]:
    """One flat row from a record (raises KeyError / TypeError when its config is not a run's)."""
    config = record.config
    model_name, task, method = config["model"]["name"], config["task"]["name"], method_label(config["method"])
    variant = config.get("variant") or "default"
    costs = record.costs
    seconds = _number(costs.train_seconds)
    provenance = record.provenance
    created = provenance.get("created") or pd.Timestamp(path.stat().st_mtime, unit="s", tz="UTC").isoformat()
    row: dict[str, Any] = {
        "path": str(path), "status": record.status, "error": record.error,
        "model": model_label(model_name, variant), "model_name": model_name, "task": task, "method": method,
        **swept_values(method, config["method"]), "seed": config.get("seed", 0), "variant": variant,
        "experiment": config.get("experiment"), "study_seeds": _number(config.get("study_seeds")),
        "semantic_key": semantic_key(config),
        "protocol": None if provenance.get("source") == "paper" else record_protocol(config["task"]),
        "config_hash": record.config_hash, "created": str(created),
        "source": provenance.get("source", "run"), "environment": environment_label(provenance),
        "memory_kind": costs.memory_kind or None, "mem_gb": _number(costs.peak_memory_gb),
        "mem_over_planned": _measured_over_planned(costs.peak_memory_gb, provenance),
        "train_seconds": seconds, "time_h": seconds / 3600 if seconds is not None else None,
        "partition": record.partition, "curve": record.curve, "segments": costs.segments,
        "epochs": _number(config["method"].get("epochs")), "max_steps": _number(config["method"].get("max_steps")),
        "steps": _number(costs.steps), "steps_per_epoch": _steps_per_epoch(record.curve),
        "batch_size": _number(config["task"].get("batch_size")),
        "run_seconds": _run_seconds(costs),           # model loaded (provenance "created") to record written
        "provenance": provenance,                     # where it ran (hizfo.run.records.provenance)
        "model_hub_id": config["model"].get("hub_id"), "model_gguf_file": config["model"].get("gguf_file"),
        "model_dtype": config["model"].get("dtype"),
    }
    for key, value in record.metrics.items():
        number = _number(value)
        if number is not None:
            row[f"metric.{key}"] = number
    return row


def _measured_over_planned(peak_gb: Any, provenance: dict[str, Any]) -> Optional[float]:
    """A CUDA run's measured peak (``max_memory_allocated``, GiB) over the planner's prediction for it
    (``provenance.planned_peak_bytes``, hizfo/run/session.py): how good the planner was; None without both. Like
    for like: both are training's and profiling's peak (hizfo/run/plan_fit.py ``measured_like``; the measured one
    is read before every evaluation, hizfo/run/loop.py); generation's prediction, where a record keeps it, is
    ``planned_generation_bytes``, which no measured peak covers."""
    measured, planned = _number(peak_gb), _number(provenance.get("planned_peak_bytes"))
    return measured * 2**30 / planned if measured is not None and planned else None


def environment_label(provenance: dict[str, Any]) -> Optional[str]:
    """Which software environment a record ran in: the lock's hash (and whether the install differed from it), or,
    for records written before the lock existed, the versions of torch, transformers and peft."""
    if provenance.get("source", "run") != "run":
        return None
    if provenance.get("lock_sha256"):
        differs = provenance.get("env_matches_lock") is False
        return f"lock {provenance['lock_sha256']}" + (" (installed versions differed)" if differs else "")
    packages = provenance.get("packages") or {}
    return "unlocked: " + ", ".join(f"{name} {packages.get(name)}" for name in ("torch", "transformers", "peft"))


def warn_mixed_environments(frame: pd.DataFrame, report: Report, what: str) -> None:
    """One warning when the records that feed ``what`` come from more than one software environment."""
    if frame.empty or "environment" not in frame:
        return
    counts = frame["environment"].dropna().value_counts()
    if len(counts) > 1:
        listing = "; ".join(f"{label}: {n} records" for label, n in counts.items())
        report.warn(f"{what} mixes records from {len(counts)} software environments ({listing}); library versions "
                    f"can move scores, so compare within one environment or re-run the others")


def load_records(results_dir: str | Path, report: Optional[Report] = None) -> pd.DataFrame:
    """Every readable record under ``results_dir`` as one row each; bad files are skipped with a warning."""
    report = report or Report()
    root = Path(results_dir)
    if not root.is_dir():
        report.warn(f"{root}: no such directory")
        return pd.DataFrame()
    rows = []
    paths = sorted(root.rglob("*.json"))
    if not paths:
        report.warn(f"{root}: no results records here (no *.json files at any depth)")
    for path in paths:
        if path.name.startswith("."):          # a writer's temp file (records.write_json_atomic)
            continue
        try:
            record = json.loads(path.read_text())
        except ValueError as exc:
            report.warn(f"skipping {path}: not valid JSON, corrupt or half-written ({exc})")
            continue
        except OSError as exc:
            report.warn(f"skipping {path}: cannot be read ({exc.strerror or exc})")
            continue
        try:
            rows.append(_row(path, RunRecord.from_json(record, source=str(path))))
        except ConfigError as exc:                     # an unknown schema version: one line naming the file
            report.warn(f"skipping {exc}")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            report.warn(f"skipping {path}: not a results record (missing or bad {exc})")
    return pd.DataFrame(rows)


def settle_cells(frame: pd.DataFrame, report: Optional[Report] = None) -> pd.DataFrame:
    """The ok records to aggregate: one config per cell (the newest if several), one record per seed."""
    report = report or Report()
    if frame.empty:
        return frame
    failed = frame[frame["status"] == "failed"]
    for _, row in failed.iterrows():
        report.note(f"failed run left out: {row['path']} ({row['error'] or 'no error recorded'})")
    ok = frame[frame["status"] == "ok"]
    kept = []
    for cell, group in ok.groupby(list(CELL_KEYS), dropna=False, sort=False):
        configs = group.groupby("semantic_key", sort=False)
        if configs.ngroups > 1:
            newest = max(configs, key=lambda item: item[1]["created"].max())[0]
            listing = "; ".join(f"config {key} (config_hash {', '.join(sorted(set(map(str, g['config_hash']))))}): "
                                f"{', '.join(g['path'])}" for key, g in configs)
            report.warn(f"cell {describe_cell(cell)} is claimed by {configs.ngroups} different configs: {listing}; "
                        f"using the newest, config {newest}, and leaving the others out")
            group = group[group["semantic_key"] == newest]
        group = group.sort_values("created")
        duplicated = group[group.duplicated("seed", keep="last")]
        if not duplicated.empty:
            report.note(f"cell {describe_cell(cell)}: the same config and seed appear in several records; counted "
                        f"once (kept the newest): {', '.join(group[group['seed'].isin(duplicated['seed'])]['path'])}")
        kept.append(group.drop_duplicates("seed", keep="last"))
    settled = pd.concat(kept, ignore_index=True) if kept else ok.iloc[0:0]
    warn_mixed_environments(settled, report, "the table's records")
    return settled


def describe_cell(cell: tuple[Any, ...]) -> str:
    """``opt-2.7b/dialogsum/hizfo (rho=0.6, alpha=0.1, lr_ratio=0.1)``."""
    model, task, method, *swept = cell
    extra = ", ".join(f"{k}={v:g}" for k, v in zip(SWEPT_KEYS, swept) if v is not None and not pd.isna(v))
    return f"{model}/{task}/{method}" + (f" ({extra})" if extra else "")


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The numeric columns to average over seeds: costs and every metric."""
    return ["mem_gb", "time_h", "train_seconds"] + sorted(c for c in frame.columns if c.startswith("metric."))


def aggregate(settled: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std and count over seeds for each cell (one row per cell)."""
    if settled.empty:
        return pd.DataFrame(columns=list(CELL_KEYS))
    numeric = metric_columns(settled)
    frame = settled.copy()
    for column in numeric:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    grouped = frame.groupby(list(CELL_KEYS), dropna=False, sort=False)
    means = grouped[numeric].mean().add_suffix(":mean")
    stds = grouped[numeric].std(ddof=1).add_suffix(":std")
    counts = grouped[numeric].count().add_suffix(":n")
    extra = grouped.agg(n_seeds=("seed", "nunique"), files=("path", list),
                        memory_kinds=("memory_kind", lambda s: sorted({k for k in s if isinstance(k, str)})),
                        partition=("partition", "first"), sources=("source", lambda s: sorted(set(s))),
                        protocols=("protocol", lambda s: sorted({p for p in s if isinstance(p, str)})))
    return pd.concat([means, stds, counts, extra], axis=1).reset_index()
