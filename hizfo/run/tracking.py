"""Experiment tracking with the real `wandb` client (offline by default: no account, no network).

One W&B run per record, across resumes: its id is derived from the run's identity (``stable_run_id``: the record's
path and config hash) and it is opened with ``resume="allow"``, so a preempted and requeued job logs into the run it
started. Offline, each process writes its own ``offline-run-<time>-<id>`` folder, all with that one id, and
``read_offline_runs`` reads them back as one run holding every step (the later process wins a step both logged;
tests/unit/run/test_wandb_resume.py). Not verified (no W&B server here): what ``wandb sync`` of several folders of
one id makes on the server. wandb 0.31's ``wandb sync --help`` only says a run's files are synced one after another
in order of start time; W&B's tracker reports a later folder replacing the earlier one's history
(wandb/wandb#3841, open; wandb/wandb#5865).
Runs of a sweep or preset share a ``group`` (``run_group``), their ``job_type`` is the method; every
``memory_every`` steps the process's (or the GPU's) memory is logged as ``memory/*``.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Optional

from hizfo.errors import ConfigError

LOGGER_KINDS = ("wandb", "none")
LOGGER_MODES = ("offline", "online", "disabled")     # wandb.init's modes (offline: no account, no network)


def check_logger(kind: str, mode: str) -> None:
    """``logger.kind`` and ``logger.mode`` are values this tracker knows (checked before the model loads)."""
    if kind not in LOGGER_KINDS:
        raise ConfigError(f"logger.kind: '{kind}' is not one of {', '.join(LOGGER_KINDS)}")
    if mode not in LOGGER_MODES:
        raise ConfigError(f"logger.mode: '{mode}' is not one of {', '.join(LOGGER_MODES)}")


def stable_run_id(record_path: str | Path, config_hash: str) -> str:
    """The W&B run id of a record: the same for every process that works on it (a resume, a requeue)."""
    digest = hashlib.sha256(f"{Path(record_path).resolve()}|{config_hash}".encode()).hexdigest()
    return f"hz-{digest[:20]}"


GROUP_CHARS = 128           # W&B's longest group name


def run_group(experiment: Optional[str], sweep_dir: Optional[str | Path]) -> Optional[str]:
    """A run's W&B group: its preset (``experiment=...``), else its sweep's command line (``sweep_command``: the
    same when the same sweep is launched again, in a new folder), else the sweep folder (``<date>/<time>``)."""
    if experiment:
        return str(experiment)
    if sweep_dir:
        parts = Path(sweep_dir).parts
        return sweep_command(sweep_dir) or ("/".join(parts[-2:]) if len(parts) >= 2 else str(sweep_dir))
    return None


def sweep_command(sweep_dir: str | Path) -> Optional[str]:
    """``method=full_ft,hizfo seed=0,1``: the sweep's overrides, sorted, from the ``multirun.yaml`` that Hydra's
    sweeper writes into the sweep folder before any job starts (on Slurm too: the folder is shared); a name over
    W&B's limit keeps its start and a hash of the whole. None without that file or overrides."""
    from omegaconf import OmegaConf
    try:
        overrides = OmegaConf.select(OmegaConf.load(Path(sweep_dir) / "multirun.yaml"), "hydra.overrides.task")
    except (OSError, ValueError):                       # no such file (a sweep folder made by hand), or not YAML
        return None
    text = " ".join(sorted(str(item) for item in overrides or ()))
    if len(text) > GROUP_CHARS:
        text = f"{text[:GROUP_CHARS - 14]}… {hashlib.sha256(text.encode()).hexdigest()[:12]}"
    return text or None


def memory_now() -> dict[str, float]:
    """The memory in use now: the GPU's allocated and reserved memory with CUDA, and the process's RSS (GB)."""
    values: dict[str, float] = {}
    try:
        with open("/proc/self/statm") as statm:
            values["memory/rss_gb"] = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        import torch
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            values["memory/cuda_allocated_gb"] = torch.cuda.memory_allocated() / 1e9
            values["memory/cuda_reserved_gb"] = torch.cuda.memory_reserved() / 1e9
    except ImportError:
        pass
    return values


def options_from_config(name: str, config: dict[str, Any], sweep_dir: Optional[str] = None) -> dict[str, Any]:
    """What a run's resolved config says of its W&B run: the stable id (from the record's path and config hash),
    the group (``logger.group``, else the preset or the sweep's command line; run.py reads the sweep from Hydra),
    the job type (the method), the memory series and W&B's system stats. A config without these keys (a test's)
    gives none."""
    from hizfo.run.runspec import config_hash
    logger = config.get("logger") or {}
    method = config.get("method") or {}
    options: dict[str, Any] = {"group": logger.get("group") or run_group(config.get("experiment"), sweep_dir),
                               "job_type": method.get("name"),
                               "memory_every": int(logger.get("memory_every", 0) or 0),
                               "system_stats": bool(logger.get("system_stats", False)), "run_id": None}
    if config.get("results_dir") and method:
        options["run_id"] = stable_run_id(Path(str(config["results_dir"])) / f"{name}.json", config_hash(config))
    return options


class Tracker:
    """A W&B run; ``kind=none`` gives a tracker that records nothing.

    ``run_id`` (``stable_run_id``): the run resumes the W&B run of that id (``resume="allow"``); ``group`` and
    ``job_type``: W&B's grouping; ``memory_every``: log ``memory_now()`` every this many steps (0: never);
    ``system_stats``: W&B's own system metrics (a sampling process beside the run). Each defaults to what the
    run's ``config`` says (``options_from_config``)."""

    def __init__(self, kind: str, project: str, mode: str, run_dir: Path, name: str, config: dict[str, Any],
                 entity: Optional[str] = None, tags: Optional[list[str]] = None, log_every: int = 1,
                 run_id: Optional[str] = None, group: Optional[str] = None, job_type: Optional[str] = None,
                 memory_every: Optional[int] = None, system_stats: Optional[bool] = None,
                 sweep_dir: Optional[str] = None) -> None:
        derived = options_from_config(name, config, sweep_dir)   # a keyword given here wins over the config's
        run_id = run_id or derived["run_id"]
        group, job_type = group or derived["group"], job_type or derived["job_type"]
        memory_every = derived["memory_every"] if memory_every is None else memory_every
        system_stats = derived["system_stats"] if system_stats is None else system_stats
        self.run = None
        self.log_every = max(1, log_every)
        self.memory_every = max(0, memory_every)
        self.location: Optional[str] = None
        check_logger(kind, mode)
        if kind == "none" or mode == "disabled":
            return
        import wandb
        run_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(project=project, entity=entity, mode=mode, dir=str(run_dir), name=name,
                              config=config, tags=tags or None, reinit="finish_previous", id=run_id,
                              resume="allow" if run_id else None, group=group, job_type=job_type,
                              settings=wandb.Settings(console="off", x_disable_stats=not system_stats))
        run_root = str(Path(self.run.dir).parent)
        self.location = run_root if mode == "offline" else (self.run.url or run_root)
        from hizfo.run.signals import RELAY
        RELAY.add_exit_hook(self.finish)    # a preemption signal ends the process: W&B keeps the rows logged so far

    def log(self, step: int, values: dict[str, float]) -> None:
        """A row on the step axis: training rows every ``log_every`` steps; evaluation rows (``eval/*``) always;
        the memory series every ``memory_every`` steps."""
        if self.run is None:
            return
        row = dict(values) if (step % self.log_every == 0 or any(k.startswith("eval/") for k in values)) else {}
        if self.memory_every and step % self.memory_every == 0:
            row.update(memory_now())
        if row:
            self.run.log(row, step=step)

    def log_epoch_eval(self, step: int, entry: dict[str, Any]) -> None:
        """An epoch's end point of the learning curve (``LoopState.epoch_evals``): eval loss and metrics."""
        row = {"eval/loss": entry["eval_loss"]} if entry.get("eval_loss") is not None else {}
        row.update({f"eval/{k}": v for k, v in (entry.get("metrics") or {}).items() if isinstance(v, (int, float))})
        if row:
            self.log(step, {**row, "eval/epoch": entry.get("epoch", 0)})

    def log_final(self, step: int, values: dict[str, Any]) -> None:
        """Metrics and costs at the end: logged once and put in the run summary."""
        if self.run is None:
            return
        flat = {k: v for k, v in values.items() if isinstance(v, (int, float))}
        self.run.log(flat, step=step)
        for key, value in values.items():
            self.run.summary[key] = value

    def finish(self, failed: bool = False) -> None:
        """End the W&B run (its rows written out: W&B's service buffers them until then)."""
        from hizfo.run.signals import RELAY
        RELAY.remove_exit_hook(self.finish)
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None


# --- reading an offline run back (tests, and checking what a run logged without a server) -----------------
_BLOCK = 32 * 1024
_RECORD_HEADER = 7  # crc32 (4), length (2), type (1): the LevelDB log layout W&B's .wandb files use
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _wandb_records(path: Path):
    """Protobuf records of a ``run-*.wandb`` file (wandb 0.31 ships the proto, not a Python reader)."""
    import struct
    from wandb.proto import wandb_internal_pb2 as pb
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    offset, pending = 7, b""
    while offset + _RECORD_HEADER <= len(data):
        space = _BLOCK - offset % _BLOCK
        if space < _RECORD_HEADER:           # block trailer padding
            offset += space
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset:offset + _RECORD_HEADER])
        offset += _RECORD_HEADER
        chunk = data[offset:offset + length]
        offset += length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def read_offline_run(run_dir: str | Path) -> dict[str, Any]:
    """History rows, summary and config of an offline W&B run directory, read from its ``.wandb`` file."""
    import json
    files = sorted(Path(run_dir).glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {run_dir}")
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    config: dict[str, Any] = {}
    identity: dict[str, Any] = {}
    for record in _wandb_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            identity = {"run_id": record.run.run_id, "group": record.run.run_group, "job_type": record.run.job_type}
        if kind == "history":
            history.append({".".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                summary[".".join(item.nested_key) or item.key] = json.loads(item.value_json)
        elif kind in ("run", "config"):
            items = record.run.config.update if kind == "run" else record.config.update
            for item in items:
                config[".".join(item.nested_key) or item.key] = json.loads(item.value_json)
    return {"history": history, "summary": summary, "config": config, **identity}


_OFFLINE_DIR = re.compile(r"offline-run-(\d{8}_\d{6})-(.+)")


def read_offline_runs(wandb_root: str | Path) -> dict[str, dict[str, Any]]:
    """Every offline run under ``wandb_root`` (a ``wandb`` folder, or a folder above it), one per run id: the
    folders of a resumed run merged in the order they were written (a step logged twice: the later row wins).
    Each value: ``history`` (rows by step), ``summary``, ``config``, ``folders``."""
    by_id: dict[str, list[Path]] = {}
    for folder in sorted(Path(wandb_root).rglob("offline-run-*")):
        match = _OFFLINE_DIR.fullmatch(folder.name)
        if match and folder.is_dir() and any(folder.glob("run-*.wandb")):
            by_id.setdefault(match.group(2), []).append(folder)
    runs: dict[str, dict[str, Any]] = {}
    for run_id, folders in by_id.items():
        folders.sort(key=lambda f: _OFFLINE_DIR.fullmatch(f.name).group(1))
        rows: dict[int, dict[str, Any]] = {}
        merged: dict[str, Any] = {"history": [], "summary": {}, "config": {}, "folders": [str(f) for f in folders]}
        for folder in folders:
            part = read_offline_run(folder)
            for row in part["history"]:
                step = int(row.get("_step", len(rows)))
                rows[step] = {**rows.get(step, {}), **row}
            merged["summary"].update(part["summary"])
            merged.update({k: part[k] for k in ("run_id", "group", "job_type") if part.get(k)})
            merged["config"].update(part["config"])
        merged["history"] = [rows[step] for step in sorted(rows)]
        runs[run_id] = merged
    return runs
