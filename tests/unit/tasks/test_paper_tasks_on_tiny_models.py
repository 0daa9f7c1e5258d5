"""Every paper task runs end to end on every tiny model family: train 2 steps, evaluate by
generation with the task's stop strings, and write an ``ok`` record. The tiny models' word-level tokenizer made
transformers' ``StopStringCriteria`` fail at evaluation; hizfo.eval.stopping stops on the decoded text instead."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures"
TASK_FILES = {                                        # task -> overrides that point it at its offline fixture
    "scitldr": ["task.data_files.train={f}/scitldr/train.jsonl", "task.data_files.eval={f}/scitldr/test.jsonl"],
    "dialogsum": ["task.data_files.train={f}/dialogsum/train.csv", "task.data_files.eval={f}/dialogsum/test.csv"],
    "webquestions": ["task.data_files.train={f}/webquestions/train.jsonl",
                     "task.data_files.eval={f}/webquestions/test.jsonl"],
    "gsm8k": ["task.data_files.train={f}/gsm8k/train.jsonl", "task.data_files.eval={f}/gsm8k/test.jsonl"],
    "math500": ["task.data_files.train={f}/math500/train.jsonl", "task.data_files.eval={f}/math500/test.jsonl"],
    "humaneval": ["task.data_files.train={f}/humaneval/mbpp_train.jsonl", "task.allow_code_execution=true"],
}
FAMILIES = ("tiny-opt", "tiny-qwen2", "tiny-bloom")


def run_in_process(overrides: list[str], tmp_path: Path) -> dict:
    """The run ``python run.py <overrides>`` makes, in this process (seconds, not tens)."""
    from hizfo.run.session import RunInputs, compose, run
    return run(compose(overrides), RunInputs(overrides=tuple(overrides), output_dir=tmp_path / "hydra"))


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("task", sorted(TASK_FILES))
def test_paper_task_trains_and_evaluates_on_a_tiny_model(task, family, tmp_path):
    torch.set_num_threads(1)
    overrides = [f"model={family}", f"task={task}", *[o.format(f=FIXTURES) for o in TASK_FILES[task]],
                 "method.max_steps=2", "task.limit=2", "task.generation.max_new_tokens=6", "task.eval_batch_size=2",
                 "logger=none", f"results_dir={tmp_path / 'runs'}", "num_threads=1"]
    record = run_in_process(overrides, tmp_path)
    assert record["status"] == "ok", record.get("error")
    (path,) = (tmp_path / "runs").rglob("seed0.json")
    assert json.loads(path.read_text())["status"] == "ok"
    assert record["costs"]["steps"] == 2
    assert len(record["samples"]) == 2 and all(isinstance(s["prediction"], str) for s in record["samples"])
    assert record["metrics"], record
