"""What identifies a run: the one place that says which config keys change the computation and which only report.

A ``RunSpec`` is built once from the composed config. It owns the variant (the folder between method and seed:
its format, how long it may be, how a path appears in it, and its parser), every path of the run (record,
predictions, checkpoint folder), the config hash that says "same computation", and resume compatibility. run.py,
the records, the checkpointer and analysis all ask it; no other list of keys exists (tests/unit/run/test_runspec.py
scans hizfo/, baselines/, analysis/ and benchmarks/ for one).

How one override appears in a variant: ``key=value``. A path names where data lives, not what a run computes, and
makes an unreadable folder name, so a path-valued override appears as its file name and a short hash of the whole
path: two files with the same name in different folders stay two variants. A variant too long for one folder name
(255 bytes on most file systems) keeps its start and ends in a hash of the whole name.
"""
from __future__ import annotations

import hashlib
import json
import posixpath
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from hizfo.errors import ConfigError

# Top-level keys that say where or how a run is reported, or on which hardware: not what it computes. The device
# is among them: the same config on the CPU and on a GPU is the same experiment, and the record's provenance says
# where it ran. ``seed`` is part of a run's identity (its record path) but not of its variant.
REPORTING_KEYS: tuple[str, ...] = (
    "results_dir", "overwrite", "logger", "hydra", "launcher", "experiment", "variant", "checkpoint_dir",
    "checkpoint_every", "eval_every_epoch", "eval_before_training", "device", "backend", "profile_shards",
    "num_threads",
    "curve_every", "study_seeds")
# Nested keys that say where data or weights come from, or whether code may run: not what is computed.
REPORTING_NESTED: dict[str, tuple[str, ...]] = {
    "model": ("path", "device_map"),
    "task": ("data_dir", "data_files", "allow_code_execution"),
}
# Config groups: choosing one is already in the path (model/task/method) or is a preset / launcher.
GROUPS: tuple[str, ...] = ("model", "task", "method", "logger", "launcher", "experiment", "tuning", "study_arm")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+,-]+")
PREDICTIONS_SUFFIX = ".predictions.jsonl"


# keys whose values are paths, by their last part (task.data_files.<split>, task.data_dir, model.path, ...)
PATH_KEYS = ("path", "data_dir", "gguf_file", "data_files")   # data_files={train: A, eval: B} as a whole
PATH_PARENTS = ("data_files",)
HASH_CHARS = 8
MAX_VARIANT_CHARS = 160      # well under NAME_MAX (255 bytes); the longest committed variant has 42


def is_path_valued(key: str, value: str) -> bool:
    """Whether the override ``key=value`` names a file or folder."""
    parts = key.split(".")
    return bool(value) and (parts[-1] in PATH_KEYS or (len(parts) > 1 and parts[-2] in PATH_PARENTS))


def short_variant_part(key: str, value: str) -> str:
    """``key=value``, or for a path ``key=<file name>-<first 8 hex of sha256(path as written)>``.

    Pure (no file system): the same file written as a relative and as an absolute path gives two variants.
    """
    if not is_path_valued(key, value):
        return f"{key}={value}"
    digest = hashlib.sha256(value.encode()).hexdigest()[:HASH_CHARS]
    if value.startswith(("{", "[")):                                # several paths at once: the hash alone
        return f"{key}={digest}"
    name = posixpath.basename(value.rstrip("/")) or "root"
    return f"{key}={name}-{digest}"


def short_variant(variant: str) -> str:
    """``variant`` itself when it has at most ``MAX_VARIANT_CHARS`` bytes, else its start, ``-`` and the first 8 hex
    of sha256(variant): distinct long variants stay distinct, and the folder name stays legal."""
    if len(variant.encode()) <= MAX_VARIANT_CHARS:
        return variant
    digest = hashlib.sha256(variant.encode()).hexdigest()[:HASH_CHARS]
    head = variant.encode()[:MAX_VARIANT_CHARS - HASH_CHARS - 1].decode(errors="ignore")
    return f"{head}-{digest}"


_OVERRIDE_SPLIT = re.compile(r",(?=[+~]?[A-Za-z_][\w.]*=)")


def parse_variant(variant: Optional[str]) -> list[tuple[str, str]]:
    """``"method.rho=0.2,model.arch.hidden_size=64"`` -> [("method.rho", "0.2"), ...] (commas in lists kept);
    ``default`` or nothing -> []. The inverse of ``derive_variant`` up to the sorting and a shortened tail."""
    if not variant or variant == "default":
        return []
    pairs = []
    for part in _OVERRIDE_SPLIT.split(variant):
        key, sep, value = part.partition("=")
        if sep:
            pairs.append((key.lstrip("+~"), value))
    return pairs


def is_reporting(key: str) -> bool:
    """Whether a dotted config key (``device``, ``task.data_files.train``) only reports, never computes."""
    parts = key.lstrip("+~").replace("/", ".").split(".")
    if parts[0] in REPORTING_KEYS:
        return True
    return len(parts) > 1 and parts[1] in REPORTING_NESTED.get(parts[0], ())


def computation(config: dict[str, Any], with_seed: bool = True) -> dict[str, Any]:
    """The part of a resolved config that decides what a run computes.

    ``_target_`` (where the code that computes it lives) is left out at every depth: moving a class to another
    module computes the same thing, so it keeps every committed run's hash."""
    kept = {k: v for k, v in config.items() if k not in REPORTING_KEYS and (with_seed or k != "seed")}
    for group, keys in REPORTING_NESTED.items():
        if isinstance(kept.get(group), dict):
            kept[group] = {k: v for k, v in kept[group].items() if k not in keys}
    return _without_targets(kept)


def _without_targets(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_targets(v) for k, v in value.items() if k != "_target_"}
    if isinstance(value, list):
        return [_without_targets(v) for v in value]
    return value


def hash_of(payload: dict[str, Any], chars: int = 16) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:chars]


def config_hash(config: dict[str, Any]) -> str:
    """Same hash, same computation (seed included): a finished run is skipped, a resume is allowed."""
    return hash_of(computation(config))


def cell_key(config: dict[str, Any]) -> str:
    """Same key, same configuration up to the seed: the seeds of one table cell share it."""
    return hash_of(computation(config, with_seed=False), chars=12)


def derive_variant(overrides: Iterable[str]) -> str:
    """``default``, or the sorted overrides that change the computation (``method.rho=0.2``; paths hashed)."""
    parts = []
    for item in overrides:
        key, _, value = item.lstrip("+~").partition("=")
        if key in GROUPS or is_reporting(key) or key == "seed":
            continue
        parts.append(short_variant_part(key, value))
    return ",".join(sorted(parts)) or "default"


def last_of_each_key(overrides: Iterable[str]) -> list[str]:
    """The overrides with a key given twice (``method.lr=1 method.lr=2``) kept once, the last, as Hydra applies
    it; one warning line for each such key, so the variant names what ran and the user hears of it."""
    last: dict[str, str] = {}
    for item in overrides:
        key = item.lstrip("+~").partition("=")[0]
        if key in last and last[key] != item:
            print(f"warning: {key}: given twice on the command line ({last[key]}, then {item}); the last wins",
                  file=sys.stderr)
        last.pop(key, None)
        last[key] = item
    return list(last.values())


def check_folder_name(key: str, value: str) -> None:
    """A name that becomes one folder of the record path stays one folder under ``results_dir``: not empty, ``.``
    or ``..``, and without a path separator or NUL (``model.name=..`` would write the record above results_dir)."""
    if value in ("", ".", "..") or any(c in value for c in ("/", "\\", "\0")):
        raise ConfigError(f"{key}: {value!r} cannot name a results folder; a name may not be empty, '.' or '..', "
                          f"nor contain '/', '\\' or NUL (the record would land outside results_dir)")


def _safe(part: str) -> str:
    return _UNSAFE.sub("_", part) or "_"


def run_folder(model: str, task: str, method: str, variant: str, seed: int) -> Path:
    """``<model>/<task>/<method>/<variant>/seed<seed>``: where a run's files live under a results or checkpoint root."""
    return Path(_safe(model)) / _safe(task) / _safe(method) / _safe(variant or "default") / f"seed{seed}"


def record_path(results_dir: str | Path, model: str, task: str, method: str, variant: str, seed: int) -> Path:
    """``<results_dir>/<model>/<task>/<method>/<variant>/seed<seed>.json``."""
    return Path(results_dir) / run_folder(model, task, method, variant, seed).with_suffix(".json")


def predictions_path(record: str | Path) -> Path:
    """``.../seed0.json`` -> ``.../seed0.predictions.jsonl`` (seeds share a folder, so the seed stays in the name)."""
    record = Path(record)
    return record.with_name(record.stem + PREDICTIONS_SUFFIX)


def checkpoint_root(results_dir: str | Path, checkpoint_dir: Optional[str | Path]) -> Path:
    """``checkpoint_dir``, or ``<results_dir>/../checkpoints`` (results/runs -> results/checkpoints)."""
    return Path(checkpoint_dir) if checkpoint_dir else Path(results_dir).parent / "checkpoints"


@dataclass(frozen=True)
class RunSpec:
    """One run's identity, built once from the resolved config and the command-line overrides."""
    config: dict[str, Any]          # the resolved config, with ``variant`` filled in
    variant: str
    path: Path                      # the record
    config_hash: str
    folder: Path                    # <model>/<task>/<method>/<variant>/seed<N>, relative to a root

    @classmethod
    def build(cls, config: dict[str, Any], overrides: Iterable[str] = ()) -> "RunSpec":
        overrides = last_of_each_key(overrides)
        config = dict(config)
        variant = derive_variant(overrides)
        named = config.get("variant")
        if named and any(o.lstrip("+~").startswith("variant=") for o in overrides):
            variant = named                          # the user named the variant: that name alone
        elif named and named != "default":          # a preset named it (a study arm): add what the command changed
            parts = set(named.split(",")) | (set(variant.split(",")) - {"default"})
            variant = ",".join(sorted(parts))
        for key in ("model", "task", "method"):
            check_folder_name(f"{key}.name", str(config[key]["name"]))
        if named:
            check_folder_name("variant", str(named))
        variant = short_variant(variant)             # a folder name has at most 255 bytes
        config["variant"] = variant
        folder = run_folder(config["model"]["name"], config["task"]["name"], config["method"]["name"], variant,
                            config["seed"])
        return cls(config=config, variant=variant, path=Path(config["results_dir"]) / folder.with_suffix(".json"),
                   config_hash=config_hash(config), folder=folder)

    def same_run(self, other_hash: Optional[str]) -> bool:
        """Whether a record or checkpoint with ``other_hash`` computed what this spec computes."""
        return other_hash == self.config_hash

    @property
    def predictions_path(self) -> Path:
        return predictions_path(self.path)

    @property
    def checkpoint_folder(self) -> Path:
        """The run's checkpoint folder: its record's place under the checkpoint root, without ``.json``."""
        return checkpoint_root(self.config["results_dir"], self.config.get("checkpoint_dir")) / self.folder

    @property
    def name(self) -> str:
        c = self.config
        return f"{c['model']['name']}/{c['task']['name']}/{c['method']['name']}/{self.variant}/seed{c['seed']}"
