"""`task=gsm8k`: GSM8K (openai/gsm8k, config main); train 7473, test 1319. Accuracy (0..1, as paper Table 2) on
the final number: the gold one follows '####', the model's is the number after its '####' or else its last.
"""
from __future__ import annotations

from typing import Any, Optional

from hizfo.eval.metrics import gsm8k_accuracy
from hizfo.tasks.base import Example
from hizfo.tasks.hub import HubSource, HubTask
from hizfo.tasks.templates import reasoning_example


class GSM8KTask(HubTask):
    """GSM8K: trains on the full worked answer (rationale + '#### N'), as Bilevel-ZOFO does."""

    sources = {"train": HubSource("openai/gsm8k", "main", "train"),
               "eval": HubSource("openai/gsm8k", "main", "test")}
    columns = {"train": ("question", "answer"), "eval": ("question", "answer")}

    def to_example(self, row: dict[str, Any], split: str) -> Optional[Example]:
        answer = str(row["answer"] or "").strip()
        if "####" not in answer:
            return None
        return reasoning_example(str(row["question"]), answer, [answer])

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        return {"accuracy": gsm8k_accuracy(predictions, [e.references[0] for e in examples])}
