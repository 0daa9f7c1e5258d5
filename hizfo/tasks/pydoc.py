"""`task=pydoc`: code summarisation on the Python standard library: a function without its docstring -> the
docstring's first sentence; ROUGE-1/2/L F1 ×100, as SciTLDR (the paper's summarisation tasks, §4.1).

The rows are a committed snapshot, ``data/pydoc/{train,eval}.jsonl``, built from CPython's own source by
``scripts/make_pydoc_snapshot.py`` (its docstring states the extraction and split rule), so the task needs no
download. ``data/pydoc/MANIFEST.json`` records the Python version the rows came from and each file's sha256;
the task checks both files against it when it is built, before any model is loaded. ``task.data_dir=DIR``
reads a snapshot folder elsewhere (the same three files).

Template: ``{source}\\nTL;DR:`` + `` {summary}`` + EOS: SciTLDR's ``{source} TL;DR:`` with a line break
instead of the space, since the source is code and ends with a code line (docs/tasks.md).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from hizfo.eval.metrics import rouge_scores
from hizfo.tasks import snapshot
from hizfo.tasks.base import Example
from hizfo.tasks.snapshot import REPO, SnapshotTask

SNAPSHOT_DIR = REPO / "data" / "pydoc"
PYDOC_SUFFIX = "\nTL;DR:"
REGENERATE = "python scripts/make_pydoc_snapshot.py"


def read_manifest(folder: Path = SNAPSHOT_DIR) -> dict[str, Any]:
    """The pydoc snapshot's MANIFEST.json (hizfo.tasks.snapshot.read_manifest)."""
    return snapshot.read_manifest(folder, "pydoc", REGENERATE, "python")


def verify_snapshot(folder: Path = SNAPSHOT_DIR) -> dict[str, Any]:
    """Check both split files against the manifest's sha256; returns the manifest."""
    return snapshot.verify_snapshot(folder, "pydoc", REGENERATE, "python")


def pydoc_example(row: dict[str, Any]) -> Example:
    """``{source}\\nTL;DR: {summary}``; the summary is the only reference."""
    return Example(source=row["source"].strip("\n"), target=row["summary"].strip(), references=[row["summary"]],
                   suffix=PYDOC_SUFFIX, meta={"module": row["module"], "qualname": row["qualname"]})


class PydocTask(SnapshotTask):
    """Python stdlib function -> first sentence of its docstring (the committed snapshot in ``data/pydoc``)."""

    snapshot_dir = SNAPSHOT_DIR
    regenerate = REGENERATE
    origin_key = "python"

    def to_example(self, row: dict[str, Any]) -> Example:
        return pydoc_example(row)

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        return rouge_scores(predictions, [e.references for e in examples], use_stemmer=self.cfg.rouge_stemmer)
