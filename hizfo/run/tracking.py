"""Experiment tracking with the real `wandb` client (offline by default: no account, no network)."""
from __future__ import annotations

import os
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


class Tracker:
    """A W&B run; ``kind=none`` gives a tracker that records nothing."""

    def __init__(self, kind: str, project: str, mode: str, run_dir: Path, name: str, config: dict[str, Any],
                 entity: Optional[str] = None, tags: Optional[list[str]] = None, log_every: int = 1) -> None:
        self.run = None
        self.log_every = max(1, log_every)
        self.location: Optional[str] = None
        check_logger(kind, mode)
        if kind == "none" or mode == "disabled":
            return
        import wandb
        run_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(project=project, entity=entity, mode=mode, dir=str(run_dir), name=name,
                              config=config, tags=tags or None, reinit="finish_previous",
                              settings=wandb.Settings(console="off", x_disable_stats=True))
        run_root = str(Path(self.run.dir).parent)
        self.location = run_root if mode == "offline" else (self.run.url or run_root)

    def log(self, step: int, values: dict[str, float]) -> None:
        if self.run is not None and (step % self.log_every == 0):
            self.run.log(values, step=step)

    def log_final(self, step: int, values: dict[str, Any]) -> None:
        """Metrics and costs at the end: logged once and put in the run summary."""
        if self.run is None:
            return
        flat = {k: v for k, v in values.items() if isinstance(v, (int, float))}
        self.run.log(flat, step=step)
        for key, value in values.items():
            self.run.summary[key] = value

    def finish(self, failed: bool = False) -> None:
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
    for record in _wandb_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({".".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                summary[".".join(item.nested_key) or item.key] = json.loads(item.value_json)
        elif kind in ("run", "config"):
            items = record.run.config.update if kind == "run" else record.config.update
            for item in items:
                config[".".join(item.nested_key) or item.key] = json.loads(item.value_json)
    return {"history": history, "summary": summary, "config": config}
