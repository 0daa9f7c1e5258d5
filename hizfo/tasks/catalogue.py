"""Every task's scores, torch-free: the keys its ``score()`` returns, which a table shows, their header and decimals,
and the task's display name. The one owner of these facts: analysis (the paper's tables and sweeps, the studies)
reads them here, and tests/unit/tasks/test_task_catalogue.py runs each task's ``score`` against its entry. A task
without an entry is refused (``entry``), never shown as another task's score.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from hizfo.errors import ConfigError


@dataclass(frozen=True)
class TaskScore:
    """How a task's score is read from ``record["metrics"]`` and shown (in the record's own scale)."""
    keys: tuple[str, ...]             # shown in a table, "/"-joined; the first is the headline (sweeps, claims)
    header: str                       # the column header, as in the paper
    decimals: int = 1                 # as the paper prints: 1 for ×100 and % scores, 3 for fractions
    also: tuple[str, ...] = ()        # more keys of score() a study report shows beside ``keys``
    other: tuple[str, ...] = ()       # the rest of score()'s keys, which no table shows

    @property
    def shown(self) -> tuple[str, ...]:
        """The keys a study report shows: ``keys``, then ``also``."""
        return self.keys + self.also

    @property
    def returned(self) -> frozenset[str]:
        """Every key ``score()`` returns."""
        return frozenset(self.keys + self.also + self.other)


@dataclass(frozen=True)
class TaskEntry:
    display: str                      # the paper's spelling of the task
    score: TaskScore


# Scales follow hizfo.eval.metrics, and match how the paper prints each: ROUGE ×100 and WebQuestions exact
# match in percent (Tables 1, 3-5); GSM8K / MATH500 accuracy and HumanEval pass@1 as fractions (Table 2).
ROUGE = TaskScore(("rouge1", "rouge2", "rougeL"), "R1/R2/RL")
PASS_AT_1 = TaskScore(("pass@1",), "pass@1", decimals=3, other=("timed_out",))   # timed_out: a count of programs
ACCURACY = TaskScore(("accuracy",), "Acc", decimals=3)

TASKS: dict[str, TaskEntry] = {
    "scitldr": TaskEntry("SciTLDR", ROUGE),
    "dialogsum": TaskEntry("DialogSum", ROUGE),
    # EM on the first answer (GreenTrainer's number); exact_match_any: on any gold answer
    "webquestions": TaskEntry("WebQuestion", TaskScore(("exact_match",), "Acc.", other=("exact_match_any",))),
    "gsm8k": TaskEntry("GSM8K", ACCURACY),
    "math500": TaskEntry("Math500", ACCURACY),
    "humaneval": TaskEntry("HumanEval", PASS_AT_1),
    "toy": TaskEntry("Toy", replace(ROUGE, other=("exact_match",))),
    "pydoc": TaskEntry("PyDoc (stdlib)", ROUGE),                               # docstring summaries, as scitldr
    "humaneval_split": TaskEntry("HumanEval (held-out half)", PASS_AT_1),
    # % equal to the word or a one-word synonym; exact_match_word: to the word only
    "wordnet_revdict": TaskEntry("WordNet reverse dictionary",
                                 TaskScore(("exact_match",), "EM", also=("exact_match_word",))),
}


def entry(task: str) -> TaskEntry:
    """The task's entry; a task the catalogue lacks is one line naming this file."""
    if task not in TASKS:
        raise ConfigError(f"task {task!r}: not in the task catalogue (hizfo/tasks/catalogue.py: {', '.join(TASKS)}); "
                          f"add its metric keys, header and decimals there")
    return TASKS[task]


def score_of(task: str) -> TaskScore:
    """How the task's score is read and shown (``entry``: an unknown task is refused)."""
    return entry(task).score


def metric_decimals(metric: str) -> int:
    """The decimals the paper prints a shown metric key with (every task that shows it agrees)."""
    found = {e.score.decimals for e in TASKS.values() if metric in e.score.shown}
    if len(found) != 1:
        raise ConfigError(f"metric {metric!r}: {'no task shows it' if not found else 'tasks print it differently'} "
                          f"(hizfo/tasks/catalogue.py)")
    return found.pop()
