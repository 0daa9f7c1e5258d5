"""Tasks whose rows are a committed snapshot: ``data/<task>/{train,eval}.jsonl`` and a ``MANIFEST.json`` with each
file's sha256, the script that regenerates them and where the rows came from.

The files are checked against the manifest when the task is built, before any model is loaded; a missing or
changed file is one ConfigError line naming the file and the regeneration command (run.py: exit 2).
``task.data_dir=DIR`` reads a snapshot folder elsewhere (the same three files).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hizfo.errors import ConfigError
from hizfo.tasks.base import Example, Task

REPO = Path(__file__).resolve().parent.parent.parent
SPLIT_FILES = {"train": "train.jsonl", "eval": "eval.jsonl"}


def shown(path: Path) -> str:
    """A path relative to the repository when it is inside it (shorter error lines)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def read_manifest(folder: Path, task: str, regenerate: str, origin_key: str) -> dict[str, Any]:
    """The snapshot's MANIFEST.json; a ConfigError naming the file and the command when it is missing or bad."""
    path = Path(folder) / "MANIFEST.json"
    try:
        manifest = json.loads(path.read_text())
        manifest["files"], manifest[origin_key]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"task {task}: {shown(path)} is missing or unreadable ({type(exc).__name__}); "
                          f"regenerate the snapshot with `{regenerate}`") from exc
    return manifest


def verify_snapshot(folder: Path, task: str, regenerate: str, origin_key: str) -> dict[str, Any]:
    """Check both split files against the manifest's sha256; returns the manifest.

    ``origin_key`` names the manifest entry that says what the rows were built from (the Python version, the
    WordNet package), which the error line repeats: a rebuild gives the same rows only from that source.
    """
    folder = Path(folder)
    manifest = read_manifest(folder, task, regenerate, origin_key)
    for name in SPLIT_FILES.values():
        path = folder / name
        expected = (manifest["files"].get(name) or {}).get("sha256")
        try:
            actual = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            actual = None
        if actual is None or actual != expected:
            state = "is missing" if actual is None else "does not match the sha256 in MANIFEST.json"
            raise ConfigError(f"task {task}: {shown(path)} {state}; regenerate the snapshot with `{regenerate}` "
                              f"(same rows only from {manifest[origin_key]}) or restore it from git")
    return manifest


class SnapshotTask(Task):
    """A task read from a checked snapshot folder; subclasses set the class attributes and ``to_example``."""

    snapshot_dir: Path
    regenerate: str                      # the command that rebuilds the snapshot
    origin_key: str                      # the manifest entry naming the rows' source

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        if self.cfg.data_files:
            raise ConfigError(f"task.data_files: task {self.name} reads its snapshot folder; use task.data_dir=DIR "
                              f"(a folder with train.jsonl, eval.jsonl and MANIFEST.json)")
        self.folder = Path(self.cfg.data_dir).expanduser() if self.cfg.data_dir else self.snapshot_dir
        self.manifest = verify_snapshot(self.folder, self.name, self.regenerate, self.origin_key)   # before the model

    def to_example(self, row: dict[str, Any]) -> Example:
        raise NotImplementedError

    def load_split(self, split: str) -> list[Example]:
        if split not in SPLIT_FILES:
            raise ConfigError(f"task {self.name}: no split '{split}' (it has: {', '.join(SPLIT_FILES)})")
        lines = (self.folder / SPLIT_FILES[split]).read_text(encoding="utf-8").splitlines()
        return [self.to_example(json.loads(line)) for line in lines if line.strip()]
