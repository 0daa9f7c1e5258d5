"""`task=math500`: evaluates on MATH-500 (HuggingFaceH4/MATH-500, 500 problems) and trains on the MATH training
split (DigitalLearningGmbH/MATH-lighteval, 7500 problems: Hendrycks et al.'s train split, re-hosted after the
original `hendrycks/competition_math` was taken down). MATH-500 is drawn from the MATH *test* split, so the two
do not overlap. Accuracy (0..1) with `math-verify`: an answer counts when it equals the gold one in value.
"""
from __future__ import annotations

from typing import Any, Optional

from hizfo.eval.metrics import math_accuracy, math_gold
from hizfo.tasks.base import Example
from hizfo.tasks.hub import HubSource, HubTask
from hizfo.tasks.templates import reasoning_example


class Math500Task(HubTask):
    """MATH500 (paper Table 2). Training targets are the worked solutions, which end in ``\\boxed{answer}``."""

    sources = {"train": HubSource("DigitalLearningGmbH/MATH-lighteval", "default", "train"),
               "eval": HubSource("HuggingFaceH4/MATH-500", None, "test")}
    columns = {"train": ("problem", "solution"), "eval": ("problem", "solution", "answer")}

    def to_example(self, row: dict[str, Any], split: str) -> Optional[Example]:
        solution = str(row.get("solution") or "").strip()
        answer = str(row.get("answer") or "").strip()
        gold = math_gold(answer) if answer else solution      # math-verify finds the \boxed{} in a solution
        if not solution or not gold:
            return None
        meta = {k: row[k] for k in ("subject", "type", "level", "unique_id") if k in row}
        return reasoning_example(str(row["problem"]), solution, [gold], meta=meta)

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        return {"accuracy": math_accuracy(predictions, [e.references[0] for e in examples])}
