"""The paper's prompt templates (A.3), as Examples: the prompt is ``prefix + source + suffix``, the target follows
after one space and ends with EOS (``encode_train``), and only ``source`` is ever truncated.

* summarisation (SciTLDR, DialogSum): ``{source} TL;DR:`` + `` {summary}``
* QA (WebQuestions):                 ``question: {q} </s> answer:`` + `` {a}`` + EOS (``</s>`` for OPT)
* reasoning and code (GSM8K, MATH, HumanEval): ``Question: {Q}\\nAnswer:`` + `` {A}``
"""
from __future__ import annotations

from typing import Any, Optional

from hizfo.tasks.base import Example

SUMMARY_SUFFIX = " TL;DR:"
QA_PREFIX, QA_SUFFIX = "question: ", " </s> answer:"
REASONING_PREFIX, REASONING_SUFFIX = "Question: ", "\nAnswer:"


def summary_example(source: str, summary: str, references: list[str],
                    meta: Optional[dict[str, Any]] = None) -> Example:
    """``{source} TL;DR: {summary}`` (A.3, summarisation)."""
    return Example(source=source.strip(), target=summary.strip(), references=[r.strip() for r in references],
                   suffix=SUMMARY_SUFFIX, meta=meta or {})


def qa_example(question: str, answers: list[str], meta: Optional[dict[str, Any]] = None) -> Example:
    """``question: {q} </s> answer: {a} </s>`` (A.3, WebQuestions); trains on the first answer."""
    answers = [a.strip() for a in answers]
    return Example(source=question.strip(), target=answers[0], references=answers, prefix=QA_PREFIX,
                   suffix=QA_SUFFIX, meta=meta or {})


def reasoning_example(question: str, answer: str, references: list[str],
                      meta: Optional[dict[str, Any]] = None) -> Example:
    """``Question: {Q}\\nAnswer: {A}`` (A.3, reasoning and coding)."""
    return Example(source=question.strip(), target=answer.strip(), references=references, prefix=REASONING_PREFIX,
                   suffix=REASONING_SUFFIX, meta=meta or {})
