"""Loading a task's rows: from the Hugging Face hub, or from a local copy in the same schema (offline clusters).

Where a split comes from, first match wins:
  1. ``task.data_files.<split>`` (``train`` / ``eval``, or the hub's own split name): one json, jsonl, csv or
     parquet file with the hub dataset's columns;
  2. ``task.data_dir``: a local copy of the hub repository (``git clone`` / ``hf download --repo-type dataset``), or a
     folder of ``train.*`` / ``test.*`` files, loaded with ``datasets.load_dataset(data_dir, config)``;
  3. the hub: ``datasets.load_dataset(dataset, config, split=..., revision=...)`` from the class's ``sources``
     (``task.options.hub.<split>`` overrides them; a task's yaml derives ``options.hub`` from the class).
Every failure is a one-line :class:`ConfigError` that names the file, the column or the dataset.
"""
from __future__ import annotations

import json
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

from hizfo.errors import ConfigError, one_line
from hizfo.hub_probe import hub_endpoint, offline_when_unreachable, probe_timeout
from hizfo.tasks.base import Example, Task

LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
PARQUET_EXPORT = "refs/convert/parquet"   # the hub's Parquet export of a script-only dataset


@dataclass(frozen=True)
class HubSource:
    """Where one split lives on the Hugging Face hub."""
    dataset: str
    config: Optional[str] = None
    split: str = "train"
    revision: Optional[str] = None

    def describe(self) -> str:
        config = f", config {self.config}" if self.config else ""
        return f"hub dataset {self.dataset} ({'split ' + self.split}{config})"


def as_list(value: Any) -> list:
    """A list-valued cell as a list: CSV holds lists as JSON text, so ``'["a", "b"]'`` becomes ``['a', 'b']``."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                return [value]
            return list(parsed) if isinstance(parsed, list) else [parsed]
        return [value]
    return list(value)


def _check_rows(dataset, where: str, columns: tuple[str, ...], task_name: str, split: str,
                schema_of: str, list_columns: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """The rows as dicts, after checking the columns are there, each cell of its kind (``list_columns``: a list
    of text, the others text) and the split not empty."""
    present = list(dataset.column_names)
    for column in columns:
        if column not in present:
            raise ConfigError(f"task {task_name}: {where} has no column '{column}' (it has: {', '.join(present)}); "
                              f"the {split} split needs the columns of {schema_of}: {', '.join(columns)}")
    if len(dataset) == 0:
        raise ConfigError(f"task {task_name}: the {split} split from {where} is empty")
    rows = dataset.to_list()
    for index, row in enumerate(rows):
        for column in columns:
            problem = _cell_problem(row[column], column in list_columns)
            if problem is not None:
                wanted = ", ".join(f"{c} as {'a list of text' if c in list_columns else 'text'}" for c in columns)
                raise ConfigError(f"task {task_name}: {where}, {_row_name(where, index)}: column '{column}' is "
                                  f"{problem}; every row of the {split} split needs {wanted}")
    return rows


def _cell_problem(value: Any, is_list: bool) -> Optional[str]:
    """What is wrong with one cell, or None: a text column holds text; a list column a list of text (or, from a
    CSV file, text: a JSON list or one item), each item text, never null or a number (the task would turn them
    into the answers 'None' or '1')."""
    if value is None:
        return "null"
    if not is_list:
        return None if isinstance(value, str) else f"{type(value).__name__} {value!r:.40}, not text"
    if not isinstance(value, (str, list)):
        return f"{type(value).__name__} {value!r:.40}, not a list of text"
    bad = next((item for item in as_list(value) if not isinstance(item, str)), "")
    if isinstance(bad, str):
        return None
    return f"{value!r:.40}: an item is {'null' if bad is None else f'{type(bad).__name__} {bad!r:.20}'}, not text"


def _row_name(where: str, index: int) -> str:
    """How a user finds row ``index`` (0-based) of ``where``: its line in a json lines or csv file."""
    if where.endswith(".jsonl"):
        return f"line {index + 1}"
    return f"line {index + 2}" if where.endswith(".csv") else f"row {index + 1}"


def _has_no_rows(file: Path) -> bool:
    """An empty text file, or a CSV with only its header line."""
    if file.suffix.lower() == ".parquet":
        return False
    try:
        with open(file, "rb") as handle:
            lines = [line for line in handle.read(1 << 16).splitlines() if line.strip()]
    except OSError:
        return False                      # unreadable: the caller names the file and why
    return len(lines) <= (1 if file.suffix.lower() == ".csv" else 0)


def load_local_file(path: str, *, columns: tuple[str, ...], task_name: str, split: str,
                    schema_of: str, list_columns: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """Rows of one local json / jsonl / csv / parquet file, checked against the columns the task needs."""
    import datasets
    file = Path(os.path.expanduser(path))
    if not file.is_file():
        raise ConfigError(f"task {task_name}: data file for the {split} split not found: {file}")
    builder = LOCAL_FORMATS.get(file.suffix.lower())
    if builder is None:
        raise ConfigError(f"task {task_name}: {file} is not a json, jsonl, csv or parquet file")
    try:
        dataset = datasets.load_dataset(builder, data_files=str(file.resolve()), split="train")
    except Exception as exc:   # datasets raises many types for a malformed file
        if _has_no_rows(file):
            raise ConfigError(f"task {task_name}: the {split} split from {file} is empty") from exc
        raise ConfigError(f"task {task_name}: could not read {file} as {builder}: {one_line(exc)}") from exc
    return _check_rows(dataset, str(file), columns, task_name, split, schema_of, list_columns)


def load_hub_split(source: HubSource, *, columns: tuple[str, ...], task_name: str, split: str,
                   data_dir: Optional[str] = None, list_columns: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """Rows of one split from the hub (or a local copy of its repository), checked against the columns."""
    import datasets
    path = source.dataset
    where = source.describe()
    if data_dir:
        folder = Path(os.path.expanduser(data_dir))
        if not folder.is_dir():
            raise ConfigError(f"task {task_name}: task.data_dir not found: {folder}")
        path, where = str(folder), f"{folder} (split {source.split})"
    unreachable = False
    try:
        # an unreachable hub (hizfo/hub_probe.py) means the local cache only: seconds, not a minute of retries
        with offline_when_unreachable() if not data_dir else nullcontext(False) as unreachable:
            dataset = datasets.load_dataset(path, source.config, split=source.split, revision=source.revision)
    except Exception as exc:   # offline, missing, renamed, or script-only: all end the same way for the user
        if "scripts are no longer supported" in str(exc) and source.revision is None and not data_dir:
            return load_hub_split(replace(source, revision=PARQUET_EXPORT), columns=columns,
                                  task_name=task_name, split=split, list_columns=list_columns)
        hint = (f"pass task.data_files={{{split}: PATH}} (json, jsonl, csv or parquet with the columns "
                f"{', '.join(columns)}) or task.data_dir=DIR")
        why = (f"the hub ({hub_endpoint()}) could not be reached within {probe_timeout():g} s and it is not cached"
               if unreachable else one_line(exc))
        raise ConfigError(f"task {task_name}: could not load the {split} split from {where}: {why}; "
                          f"offline? download it and {hint}") from exc
    return _check_rows(dataset, where, columns, task_name, split, source.dataset, list_columns)


class HubTask(Task):
    """A task whose splits load from the hub or a local copy; subclasses turn a row into an :class:`Example`."""

    sources: dict[str, HubSource] = {}  # the one owner of where each split lives (the yaml derives options.hub)
    columns: dict[str, tuple[str, ...]] = {}
    # the columns a task reads as a list of text (as_list), every other column is text: webquestions' answers,
    # scitldr's source sentences and targets (no other hub task has a column of these names); a task may narrow it
    list_columns: frozenset[str] = frozenset({"answers", "source", "target"})
    options_schema = {**Task.options_schema, "hub": "dict"}

    @classmethod
    def hub_config(cls) -> dict[str, dict[str, Any]]:
        """``sources`` as config, ``{split: {dataset, config, split}}`` (``revision`` where set): what a task yaml's
        ``options.hub: ${hizfo_hub:${.._target_}}`` resolves to, so the run's config and hash carry the sources."""
        return {split: {"dataset": s.dataset, "config": s.config, "split": s.split,
                        **({"revision": s.revision} if s.revision is not None else {})}
                for split, s in cls.sources.items()}

    def source(self, split: str) -> HubSource:
        """The split's hub source: the class default, updated by ``task.options.hub.<split>``."""
        if split not in self.sources:
            raise ConfigError(f"task {self.name}: no split '{split}' (it has: {', '.join(self.sources)})")
        overrides = dict((self.cfg.options.get("hub") or {}).get(split) or {})
        unknown = set(overrides) - {"dataset", "config", "split", "revision"}
        if unknown:
            raise ConfigError(f"task.options.hub.{split}: unknown keys {sorted(unknown)} "
                              f"(allowed: dataset, config, split, revision)")
        return replace(self.sources[split], **overrides)

    def local_file(self, split: str) -> Optional[str]:
        """``task.data_files`` entry for this split (by our name, or by the hub's split name)."""
        files = self.cfg.data_files or {}
        return files.get(split) or files.get(self.source(split).split)

    def rows(self, split: str) -> list[dict[str, Any]]:
        """The raw rows of ``train`` or ``eval``, from the first place that has them (module docstring)."""
        source = self.source(split)
        columns = self.columns[split]
        local = self.local_file(split)
        if local:
            return load_local_file(local, columns=columns, task_name=self.name, split=split,
                                   schema_of=source.dataset, list_columns=self.list_columns)
        return load_hub_split(source, columns=columns, task_name=self.name, split=split,
                              data_dir=self.cfg.data_dir, list_columns=self.list_columns)

    def to_example(self, row: dict[str, Any], split: str) -> Optional[Example]:
        """One row in the paper's template (A.3); None skips a row that cannot be used."""
        raise NotImplementedError

    def load_split(self, split: str) -> list[Example]:
        """The split's examples. A row whose target is empty (an empty answer list, a blank summary or code) is
        skipped, and one line counts the skipped rows; a row with a null or non-text column stopped in ``rows``."""
        examples, rows = [], self.rows(split)
        for row in rows:
            example = self.to_example(row, split)
            if example is not None:
                examples.append(example)
        if len(examples) < len(rows):
            print(f"task {self.name}: skipped {len(rows) - len(examples)} of {len(rows)} {split} rows without a "
                  f"usable target (an empty answer list, or a blank target)", file=sys.stderr)
        return examples
