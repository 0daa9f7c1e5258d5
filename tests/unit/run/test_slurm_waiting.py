"""A sweep's submitter waits for every submitit job, and a job that dies returning nothing (``os._exit``, a kill,
out of memory) is a failed result, not the end of the wait; the summary counts a job as lost only once submitit
says it ended. Real submitit jobs, on its LocalExecutor (separate processes, as on Slurm): a real one-node Slurm
(tests/integration/test_slurm.py) needs root and apt-get, minutes; the waiting code is the same for both."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from hydra.core.utils import JobStatus

from hizfo.run import sweep_summary
from hizfo.run.slurm_launcher import collect_results
from hizfo.run.sweep_summary import JobOutcome, lost_jobs, note_submitted

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]


@pytest.fixture
def executor(tmp_path, monkeypatch) -> Iterator[Any]:
    submitit = pytest.importorskip("submitit")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(sweep_summary, "_SUBMITTED", {})
    ex = submitit.LocalExecutor(folder=tmp_path / ".submitit" / "%j")
    ex.update_parameters(timeout_min=2)
    # the jobs take SIGINT as a terminal's child does: LocalExecutor cancels with SIGINT, which a child would
    # ignore where pytest itself runs with SIGINT ignored (a script's background job, as CI may run it)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield ex
    signal.signal(signal.SIGINT, before)


def test_a_dead_job_is_a_failed_result_the_rest_are_waited_for_and_only_ended_jobs_are_lost(executor, tmp_path):
    """One test: submitit waits about 15 s for a dead job's result file (slow file systems) before it gives up."""
    since = time.time()
    dies = executor.submit(os._exit, 1)                    # no result file: submitit's UncompletedJobError
    later = executor.submit(sum, [1, 2, 3])
    running = executor.submit(time.sleep, 120)
    note_submitted([dies, later, running])
    try:
        results = collect_results([dies, later], [["method=mezo", "seed=0"], ["method=mezo", "seed=1"]])
        assert later.done() and results[1] == 6
        failed = results[0]
        assert failed.status == JobStatus.FAILED and failed.overrides == ["method=mezo", "seed=0"]
        assert "UncompletedJob" in type(failed._return_value).__name__, repr(failed._return_value)
        assert Path(running.paths.stderr).exists() and not running.done()
        lost = lost_jobs(tmp_path, [], since)
        ended = {Path(job.paths.stderr).name for job in (dies, later)}    # neither wrote a hizfo status file
        assert {Path(o.slurm_log).name for o in lost} == ended                # and `running` is not lost
        assert all(o.status == "failed" and "ended without a status" in o.error for o in lost)
        reported = [JobOutcome(num=n, overrides=[], status="failed", slurm_log=str(job.paths.stderr))
                    for n, job in enumerate((dies, later))]
        assert lost_jobs(tmp_path, reported, since) == []      # a job with a status file is not lost twice
    finally:
        running.cancel()                                   # the sleeping process this test started
    for _ in range(600):                                       # a loaded box: up to a minute
        if running.done():
            break
        time.sleep(0.1)
    assert running.done(), "the cancelled job is still running"
    assert {Path(o.slurm_log).name for o in lost_jobs(tmp_path, [], since)} == \
        ended | {Path(running.paths.stderr).name}
