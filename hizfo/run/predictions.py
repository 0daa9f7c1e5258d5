"""Every evaluation prediction of a run, next to its record (``RunSpec.predictions_path``:
``seed<N>.predictions.jsonl``, one JSON object a line).

The record keeps five samples; this file keeps all of them, so a score can be re-checked or re-scored without
generating again. Written as the record is (hizfo.run.records.write_json_atomic): a temp file in the same folder,
fsync, rename, so a reader sees the old file or the new one, never half of one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from hizfo.run.records import write_text_atomic


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """One JSON object per line, written atomically as records are (``hizfo.run.records.write_text_atomic``)."""
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows))


def prediction_rows(examples: list[Any], predictions: list[str]) -> list[dict[str, Any]]:
    """One row per evaluation example: its index, prompt, the model's (cut) prediction and the references."""
    rows = []
    for index, (example, prediction) in enumerate(zip(examples, predictions)):
        row = {"index": index, "prompt": example.prompt, "prediction": prediction, "references": example.references}
        task_id = (example.meta.get("problem") or {}).get("task_id") or example.meta.get("task_id")
        if task_id is not None:
            row["task_id"] = task_id
        rows.append(row)
    return rows


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
