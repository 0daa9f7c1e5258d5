"""`task=webquestions`: WebQuestions (stanfordnlp/web_questions, the hub's home of `web_questions`);
train 3778, test 2032. Exact match on the first gold answer (GreenTrainer's number) and on any gold answer,
compared as ``task.protocol`` says (``options.protocols.<protocol>.answer_match``: ``exact`` for GreenTrainer's
protocol, ``squad`` for ``normalized``; hizfo.eval.metrics.answers_match).
"""
from __future__ import annotations

from typing import Any, Optional

from hizfo.eval.metrics import webquestions_exact_match
from hizfo.tasks.base import Example
from hizfo.tasks.hub import HubSource, HubTask, as_list
from hizfo.tasks.templates import qa_example


class WebQuestionsTask(HubTask):
    """WebQuestions (paper §4.1, Table 1). Unlike GreenTrainer's code, its train split really trains (§7)."""

    sources = {"train": HubSource("stanfordnlp/web_questions", None, "train"),
               "eval": HubSource("stanfordnlp/web_questions", None, "test")}
    columns = {"train": ("question", "answers"), "eval": ("question", "answers")}

    def to_example(self, row: dict[str, Any], split: str) -> Optional[Example]:
        answers = [str(a).strip() for a in as_list(row["answers"]) if str(a).strip()]
        if not answers:
            return None
        return qa_example(str(row["question"]), answers, meta={"url": row.get("url")})

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        match = self.protocol_settings().get("answer_match", "exact")
        return webquestions_exact_match(predictions, [e.references for e in examples], match=match)
