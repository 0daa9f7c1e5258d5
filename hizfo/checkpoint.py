"""Checkpoints for exact resume (filled in by the Slurm/preemption work)."""
from __future__ import annotations

from typing import Any, Optional


class Checkpointer:
    @classmethod
    def for_run(cls, cfg: Any, config: dict, record_path: Any) -> Optional["Checkpointer"]:
        return None
