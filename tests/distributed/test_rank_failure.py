"""A rank other than 0 fails mid-run (its own exception): every rank stops, and rank 0's failed record names that
rank's error first, not only the lost connection rank 0 saw next (hizfo/run/rank_failures.py)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.distributed.test_checkpoint_dp import ARGS
from tests.distributed.test_data_parallel import ENV, _free_port

pytestmark = [pytest.mark.distributed, pytest.mark.subprocess]


def test_a_failure_on_rank_1_is_the_cause_in_rank_0s_record(tmp_path):
    results = tmp_path / "runs"
    args = [a if not a.startswith("method.max_steps=") else "method.max_steps=400" for a in ARGS]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "tests/distributed/failing_run.py", *args, f"results_dir={results}",
           f"hydra.run.dir={tmp_path / 'out'}"]
    env = {**ENV, "HIZFO_TEST_FAIL_RANK": "1", "HIZFO_TEST_FAIL_STEP": "5", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    (path,) = results.rglob("seed0.json")
    record = json.loads(path.read_text())
    assert record["status"] == "failed", record["status"]
    assert record["error"].startswith("rank 1 failed first: ValueError: injected failure on rank 1 at step 5; "
                                      "then rank 0: "), record["error"]
    assert "rank 1:\n" in record["traceback"] and "failing_step" in record["traceback"]
    assert not list((tmp_path / "checkpoints").rglob("rank-*.failed")), "rank 0 left the notes it read"
