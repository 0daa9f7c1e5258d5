"""The real-model study's arms: records → one row per (arm, seed), and the arms, their seeds, values and sweeps.

An *arm* is (model, task, method, variant). The method is analysis.specs.method_label's (``hizfo`` with
``alpha_mode=loss`` shows as ``hizfo_alpha_loss``, so the two readings of α never mix). The variant is the record's
``config["variant"]``, split into key=value pairs (hizfo.run.runspec.parse_variant) and cleaned so that the same
computation gets the same name: ``method.alpha_mode`` is left out (it is in the method's name); so are keys that
only say where data or weights come from (``model.path``, ``task.data_dir``, ``task.allow_code_execution``, ...);
so are pairs that every record of the task shares (the study's common settings, listed in the report); and so is
a swept hyperparameter (ρ, α, r) set to the value the arm's method has when that key is not overridden (read
from those records' own ``config["method"]``). What is left is the arm's variant, ``default`` when nothing is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from analysis.loading import Report, load_records
from analysis.specs import METHOD_DISPLAY
from analysis.study.stats import Interval, difference_interval, t_interval
from hizfo.run.runspec import is_reporting, parse_variant
from hizfo.tasks.catalogue import metric_decimals, score_of

# a study shows at least two decimals (its seed means and intervals move in the second), fractions with the paper's 3
STUDY_DECIMALS = 2
# variant keys the method's name already carries (analysis.specs.method_label); the keys that do not change what
# a run computes are RunSpec's (hizfo.run.runspec.is_reporting)
LABEL_KEYS = ("method.alpha_mode",)
# the variant keys that move each swept hyperparameter (r can be set as lr_ratio or as an absolute zo_lr)
SWEEP_KEYS: dict[str, tuple[str, ...]] = {"rho": ("method.rho",), "alpha": ("method.alpha",),
                                          "lr_ratio": ("method.lr_ratio", "method.zo_lr")}
HIZFO = "hizfo"
HIZFO_READINGS = ("hizfo", "hizfo_alpha_loss")        # α scales the ZO update | α weights the ZO loss


def _ignored(key: str) -> bool:
    return key in LABEL_KEYS or is_reporting(key)


def _swept_key(variant_key: str) -> Optional[str]:
    return next((name for name, keys in SWEEP_KEYS.items() if variant_key in keys), None)


def _same(a: Any, b: Any) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return False


def assign_arms(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[tuple[str, str], list[str]]]:
    """Add the cleaned ``arm_variant`` column (module docstring); returns the frame and each task's shared pairs."""
    frame = frame.copy()
    pairs = [[(k, v) for k, v in parse_variant(variant) if not _ignored(k)] for variant in frame["variant"]]
    frame["_pairs"] = pairs
    shared: dict[tuple[str, str], list[str]] = {}
    for (model, task), group in frame.groupby(["model", "task"], sort=False):
        common = set.intersection(*(set(p) for p in group["_pairs"]))
        shared[(model, task)] = sorted(f"{k}={v}" for k, v in common)
        for index in group.index:
            frame.at[index, "_pairs"] = [p for p in frame.at[index, "_pairs"] if p not in common]
    # the value a swept key has where the variant leaves it alone, per (model, task, method)
    defaults: dict[tuple[str, str, str, str], float] = {}
    for (model, task, method), group in frame.groupby(["model", "task", "method"], sort=False):
        for name, keys in SWEEP_KEYS.items():
            untouched = [row[name] for _, row in group.iterrows()
                         if not any(k in keys for k, _ in row["_pairs"]) and row.get(name) is not None
                         and not pd.isna(row.get(name))]
            if untouched and all(_same(v, untouched[0]) for v in untouched):
                defaults[(model, task, method, name)] = float(untouched[0])
    variants = []
    for _, row in frame.iterrows():
        kept = []
        for key, value in row["_pairs"]:
            name = _swept_key(key)
            default = defaults.get((row["model"], row["task"], row["method"], name)) if name else None
            if name and default is not None and _same(row.get(name), default):
                continue                                    # set to its default: the default arm
            kept.append(f"{key}={value}")
        variants.append(",".join(sorted(kept)) or "default")
    frame["arm_variant"] = variants
    return frame.drop(columns=["_pairs"]), shared


def load_study(results_dir: str | Path, report: Optional[Report] = None) -> tuple[pd.DataFrame, dict]:
    """One row per (arm, seed) from the ok records (newest record when a seed repeats), plus the shared settings."""
    report = report or Report()
    frame = load_records(results_dir, report)
    if frame.empty:
        return frame, {}
    for _, row in frame[frame["status"] == "failed"].iterrows():
        report.note(f"failed run left out: {row['path']} ({row['error'] or 'no error recorded'})")
    ok = frame[frame["status"] == "ok"]
    if ok.empty:
        return ok, {}
    ok, shared = assign_arms(ok)
    ok = ok.sort_values("created")
    keys = ["model", "task", "method", "arm_variant", "seed"]
    for _, group in ok[ok.duplicated(keys, keep=False)].groupby(keys, sort=False):
        newest, older = group.iloc[-1], group.iloc[:-1]
        if (older["semantic_key"] != newest["semantic_key"]).any():   # not the same computation (loading.semantic_key)
            report.warn(f"{', '.join(older['path'])}: same arm and seed as {newest['path']} but a different config; "
                        f"using the newest ({newest['path']})")
        else:
            report.note(f"{', '.join(older['path'])}: same arm, seed and config as {newest['path']}; counted once")
    ok = ok.drop_duplicates(keys, keep="last").reset_index(drop=True)
    epochs = [_epochs_trained(row) for _, row in ok.iterrows()]
    ok["seconds_per_epoch"] = [s / e if e and s is not None and not pd.isna(s) else None
                               for s, e in zip(ok["train_seconds"], epochs)]
    return ok, shared



def _epochs_trained(row: pd.Series) -> Optional[float]:
    """Epochs a record trained: the config's epochs, or steps / steps-per-epoch when max_steps cut the run."""
    epochs, steps, per_epoch = row.get("epochs"), row.get("steps"), row.get("steps_per_epoch")
    if row.get("max_steps") is None or pd.isna(row.get("max_steps")):
        return float(epochs) if epochs is not None and not pd.isna(epochs) else None
    if steps is not None and per_epoch and not pd.isna(per_epoch):
        return float(steps) / float(per_epoch)
    return None



def task_metrics(task: str, frame: pd.DataFrame) -> tuple[str, ...]:
    """The metric keys to show for a task (hizfo/tasks/catalogue.py), the claims' metric first; an unknown task is
    refused."""
    keys = score_of(task).shown
    present = tuple(k for k in keys if f"metric.{k}" in frame.columns)
    if present:
        return present
    return tuple(sorted(c[len("metric."):] for c in frame.columns if c.startswith("metric.")))[:1]


def decimals(metric: str) -> int:
    return max(STUDY_DECIMALS, metric_decimals(metric))


@dataclass
class Arm:
    """One arm and its seeds' values."""
    model: str
    task: str
    method: str
    variant: str
    rows: pd.DataFrame = field(repr=False)

    @property
    def seeds(self) -> list[int]:
        return sorted(int(s) for s in self.rows["seed"])

    @property
    def planned_seeds(self) -> Optional[int]:
        """The seeds the study planned for this arm (its records' ``study_seeds``), None when they do not say."""
        planned = [int(v) for v in self.rows.get("study_seeds", pd.Series(dtype=float)) if v is not None
                   and not pd.isna(v)]
        return max(planned) if planned else None

    @property
    def seeds_shown(self) -> str:
        """``n``, or ``n of planned`` while the arm has fewer seeds than its study planned."""
        planned = self.planned_seeds
        return f"{len(self.seeds)} of {planned}" if planned and planned > len(self.seeds) else str(len(self.seeds))

    def values(self, column: str) -> dict[int, float]:
        if column not in self.rows.columns:
            return {}
        return {int(s): float(v) for s, v in zip(self.rows["seed"], self.rows[column]) if v is not None
                and not pd.isna(v)}

    def interval(self, column: str) -> Interval:
        return t_interval(list(self.values(column).values()))

    def swept(self, name: str) -> Optional[float]:
        values = {float(v) for v in self.rows.get(name, pd.Series(dtype=float)) if v is not None and not pd.isna(v)}
        return values.pop() if len(values) == 1 else None

    @property
    def label(self) -> str:
        name = METHOD_DISPLAY.get(self.method, self.method)
        return name if self.variant == "default" else f"{name} [{self.variant}]"


def arms_of(frame: pd.DataFrame) -> list[Arm]:
    arms = []
    for (model, task, method, variant), rows in frame.groupby(["model", "task", "method", "arm_variant"], sort=True):
        arms.append(Arm(model, task, method, variant, rows))
    return arms


def interim_arms(arms: list[Arm]) -> list[Arm]:
    """The arms with fewer seeds than their study planned: while any is left, the study is not finished."""
    return [a for a in arms if a.planned_seeds and a.planned_seeds > len(a.seeds)]


def find_arm(arms: list[Arm], model: str, task: str, method: str, variant: str = "default") -> Optional[Arm]:
    return next((a for a in arms if (a.model, a.task, a.method, a.variant) == (model, task, method, variant)), None)


def sweep_arms(arms: list[Arm], model: str, task: str, method: str, name: str) -> dict[float, Arm]:
    """The arms of one ρ / α / r sweep: the default arm and those whose variant moves only ``name``."""
    found: dict[float, Arm] = {}
    for arm in arms:
        if (arm.model, arm.task, arm.method) != (model, task, method):
            continue
        keys = [key for key, _ in parse_variant(arm.variant)]
        if all(k in SWEEP_KEYS[name] for k in keys):
            value = arm.swept(name)
            if value is not None and (value not in found or arm.variant == "default"):
                found[round(value, 6)] = arm
    return dict(sorted(found.items()))


def paired(a: Arm, b: Arm, column: str) -> tuple[Interval, list[int]]:
    """a − b over the seeds both arms have: the mean difference and its 95 % t interval (none where all the
    differences are equal: study_stats.difference_interval)."""
    va, vb = a.values(column), b.values(column)
    seeds = sorted(set(va) & set(vb))
    return difference_interval([va[s] - vb[s] for s in seeds]), seeds

