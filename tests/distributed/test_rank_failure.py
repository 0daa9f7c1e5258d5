"""A rank other than 0 fails mid-run (its own exception): every rank stops, and rank 0's failed record names that
rank's error first, not only the lost connection rank 0 saw next (hizfo/run/rank_failures.py)."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.distributed.test_checkpoint_dp import ARGS
from tests.distributed.test_data_parallel import ENV, _free_port, said_once_by_rank_0, torchrun_prefix

pytestmark = [pytest.mark.distributed, pytest.mark.subprocess]


def _reap(procs: list[subprocess.Popen]) -> None:
    """Kill what a failed or timed-out test left running: each process's children (torchrun starts its workers in
    sessions of their own), then the process."""
    for proc in procs:
        if proc.poll() is None:
            children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            for pid in [*children, str(proc.pid)]:
                subprocess.run(["kill", "-KILL", pid], check=False)
            proc.communicate(timeout=60)


def test_a_failure_on_rank_1_is_the_cause_in_rank_0s_record_and_ends_the_sweep(tmp_path):
    """Rank 1 fails at step 5 of a sweep's first job: rank 0's record of that job names it, and the sweep ends there
    (its ranks' collectives may no longer pair up in the group the jobs share): no second job, a non-zero exit."""
    results = tmp_path / "runs"
    args = [a if not a.startswith("method.max_steps=") else "method.max_steps=400" for a in ARGS]
    cmd = [*torchrun_prefix(2), "tests/distributed/failing_run.py", "-m", "seed=0,1", *args,
           f"results_dir={results}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    env = {**ENV, "HIZFO_TEST_FAIL_RANK": "1", "HIZFO_TEST_FAIL_STEP": "5", "PYTHONPATH": str(ROOT)}
    launcher = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        launcher.communicate(timeout=300)
    finally:
        _reap([launcher])
    assert launcher.returncode != 0
    (path,) = results.rglob("*.json")                     # the first job's, not the second's
    assert path.name == "seed0.json"
    record = json.loads(path.read_text())
    assert record["status"] == "failed", record["status"]
    assert record["error"].startswith("rank 1 failed first: ValueError: injected failure on rank 1 at step 5; "
                                      "then rank 0: "), record["error"]
    assert "rank 1:\n" in record["traceback"] and "failing_step" in record["traceback"]
    assert not list((tmp_path / "checkpoints").rglob("rank-*.failed")), "rank 0 left the notes it read"


@pytest.mark.parametrize("where", ["shard", "rng"])
def test_a_full_disk_on_rank_1_at_a_checkpoint_leaves_a_failed_record_naming_it(tmp_path, where):
    """Rank 1 cannot write its part of the step-3 checkpoint (ENOSPC), in DCP's write of its shard or in its RNG
    states after it: every rank stops; rank 0's failed record names rank 1's error, and no half-written folder is
    left. (Before: DCP's failure, a BaseException, escaped every handler, a traceback on each rank and no record;
    the other, a ConfigError, one line and no record.)"""
    results = tmp_path / "runs"
    cmd = [*torchrun_prefix(2), "tests/distributed/failing_run.py", *ARGS, f"results_dir={results}",
           f"hydra.run.dir={tmp_path / 'out'}"]
    env = {**ENV, "HIZFO_TEST_FULL_DISK_RANK": "1", "HIZFO_TEST_FULL_DISK_AT": where, "PYTHONPATH": str(ROOT)}
    launcher = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = launcher.communicate(timeout=300)
    finally:
        _reap([launcher])
    assert launcher.returncode != 0
    (path,) = results.rglob("seed0.json")
    record = json.loads(path.read_text())
    assert record["status"] == "failed" and record["failed_step"] is None, record
    cause = re.compile(r"rank 1 failed( first)?: OSError: \[Errno 28\] No space left on device")
    assert cause.search(record["error"]), record["error"]        # " first": rank 1's note was there in time
    assert any(line.startswith("failed: ") and cause.search(line) for line in err.splitlines()), err[-3000:]
    folders = [p.name for p in (tmp_path / "checkpoints").rglob("*") if p.is_dir()]
    assert not [name for name in folders if name.startswith((".tmp", "step-"))], folders


def test_a_bad_config_is_said_by_rank_0_even_when_rank_1_finds_it_first(tmp_path):
    """Every rank finds a bad config alike and only rank 0 says it; rank 1, done first, used to exit at once, and
    torchrun then stopped rank 0 before its line (lost now and then on a busy box; always with rank 0 3 s slower).
    Rank 1 now waits while rank 0 reports."""
    cmd = [*torchrun_prefix(2), "tests/distributed/failing_run.py", "task.batch_size=3", "method.max_steps=2",
           "logger=none", "num_threads=1", f"results_dir={tmp_path / 'runs'}", f"hydra.run.dir={tmp_path / 'out'}"]
    env = {**ENV, "HIZFO_TEST_SLOW_RANK": "0", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    said_once_by_rank_0(proc, "task.batch_size: the global batch 3 does not split over 2 processes", tmp_path / "runs")


def test_a_rank_preempted_during_evaluation_is_named_and_the_relaunch_ends_ok(tmp_path):
    """Two processes started as srun starts a multi-node step (Slurm's variables, no torchrun to stop the others):
    rank 1 gets SIGTERM as evaluation starts and stops at once; rank 0 fails in its next collective, and its
    failed record says rank 1 was stopped after training; the relaunch resumes from the end-of-training checkpoint
    (no step trained again) and ends ok."""
    results = tmp_path / "runs"
    args = [*[a for a in ARGS if not a.startswith("method.max_steps=")], "method.max_steps=6",
            f"results_dir={results}", f"hydra.run.dir={tmp_path / 'out'}"]
    port = str(_free_port())

    def start(rank: int, **extra: str) -> subprocess.Popen:
        env = {**ENV, "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank),
               "SLURM_STEP_NODELIST": "127.0.0.1", "MASTER_PORT": port, "PYTHONPATH": str(ROOT), **extra}
        return subprocess.Popen([sys.executable, "tests/distributed/failing_run.py", *args], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    ranks = [start(r, HIZFO_TEST_SIGNAL_RANK="1") for r in (0, 1)]
    try:
        said = [p.communicate(timeout=300) for p in ranks]
    finally:
        _reap(ranks)
    assert ranks[1].returncode == -15 and ranks[0].returncode != 0, said[0][1][-2000:]
    (path,) = results.rglob("seed0.json")
    failed = json.loads(path.read_text())
    assert failed["status"] == "failed" and failed["error"].startswith(
        "rank 1 failed first: stopped by SIGTERM after training (a relaunch resumes from the end-of-training "
        "checkpoint, step 6, and evaluates again); then rank 0: "), failed["error"]
    port = str(_free_port())
    ranks = [start(r) for r in (0, 1)]
    try:
        said = [p.communicate(timeout=300) for p in ranks]
    finally:
        _reap(ranks)
    assert [p.returncode for p in ranks] == [0, 0], said[0][1][-2000:]
    assert "at step 6\n" in said[0][0] + said[0][1] and json.loads(path.read_text())["status"] == "ok"
