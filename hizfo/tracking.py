"""Experiment tracking with the real `wandb` client (offline by default: no account, no network)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional


class Tracker:
    """A W&B run; ``kind=none`` gives a tracker that records nothing."""

    def __init__(self, kind: str, project: str, mode: str, run_dir: Path, name: str, config: dict[str, Any],
                 entity: Optional[str] = None, tags: Optional[list[str]] = None, log_every: int = 1) -> None:
        self.run = None
        self.log_every = max(1, log_every)
        self.location: Optional[str] = None
        if kind == "none" or mode == "disabled":
            return
        if kind != "wandb":
            from hizfo.errors import ConfigError
            raise ConfigError(f"logger.kind: '{kind}' is not one of wandb, none")
        import wandb
        run_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(project=project, entity=entity, mode=mode, dir=str(run_dir), name=name,
                              config=config, tags=tags or None, reinit="finish_previous",
                              settings=wandb.Settings(console="off", x_disable_stats=True))
        self.location = self.run.dir if mode == "offline" else (self.run.url or self.run.dir)

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
