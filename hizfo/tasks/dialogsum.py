"""`task=dialogsum`: DialogSum (knkarthick/dialogsum), dialogue -> summary; ROUGE-1/2/L ×100."""
from __future__ import annotations

from typing import Any, Optional

from hizfo.tasks.base import Example
from hizfo.tasks.hub import HubSource
from hizfo.tasks.scitldr import SummarizationTask
from hizfo.tasks.templates import summary_example

# The original DialogSum test set has three summaries per dialogue; a local copy that keeps them is scored
# against all of them.
EXTRA_SUMMARIES = ("summary1", "summary2", "summary3")


class DialogSumTask(SummarizationTask):
    """DialogSum (paper §4.1, Table 1)."""

    sources = {"train": HubSource("knkarthick/dialogsum", None, "train"),
               "eval": HubSource("knkarthick/dialogsum", None, "test")}
    columns = {"train": ("dialogue", "summary"), "eval": ("dialogue", "summary")}

    def to_example(self, row: dict[str, Any], split: str) -> Optional[Example]:
        summary = str(row["summary"] or "").strip()
        if not summary:
            return None
        references = [summary] + [str(row[k]).strip() for k in EXTRA_SUMMARIES if row.get(k)]
        return summary_example(str(row["dialogue"]), summary, references,
                               meta={"id": row.get("id"), "topic": row.get("topic")})
