"""`task=scitldr`: SciTLDR (allenai/scitldr, config Abstract), abstract -> one-sentence TL;DR; ROUGE-1/2/L ×100.

The source is a list of sentences (joined with spaces); training uses the first gold TL;DR, and evaluation scores
against it too (``task.references=first``, GreenTrainer's protocol) or against the best of all (``references=all``).
"""
from __future__ import annotations

from typing import Any, Optional

from hizfo.eval.metrics import rouge_scores
from hizfo.tasks.base import Example
from hizfo.tasks.hub import HubSource, HubTask, as_list
from hizfo.tasks.templates import summary_example


class SummarizationTask(HubTask):
    """Shared scoring for the summarisation tasks: ROUGE with `rouge-score` against ``task.references``.

    ``first`` (default): the first gold reference only, as GreenTrainer scores (its ``target[0]``); ``all``: the best
    of all references per example (rouge-score's ``score_multi``), which can only raise the score.
    """

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        first = self.cfg.references == "first"
        references = [e.references[:1] if first else e.references for e in examples]
        return rouge_scores(predictions, references, use_stemmer=self.cfg.rouge_stemmer)


class SciTLDRTask(SummarizationTask):
    """SciTLDR, Abstract-only input (paper §4.1, Table 1)."""

    sources = {"train": HubSource("allenai/scitldr", "Abstract", "train"),
               "eval": HubSource("allenai/scitldr", "Abstract", "test")}
    columns = {"train": ("source", "target"), "eval": ("source", "target")}

    def to_example(self, row: dict[str, Any], split: str) -> Optional[Example]:
        sentences = [str(s).strip() for s in as_list(row["source"])]
        targets = [str(t).strip() for t in as_list(row["target"]) if str(t).strip()]
        if not targets:
            return None
        return summary_example(" ".join(s for s in sentences if s), targets[0], targets,
                               meta={"paper_id": row.get("paper_id")})
