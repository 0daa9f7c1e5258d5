"""Checkpoint integrity and single ownership through run.py: a checkpoint damaged after a SIGKILL (one flipped byte,
or a truncated file) is reported on one line and not resumed from, and the run still ends with an ok record equal to
an uninterrupted run's; a second launch of a run that is going stops with one line and leaves the first alone."""
from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from tests.integration.test_resume import (CLI_SMALL, TOTAL_STEPS, assert_same_run, newest_step, only_record,
                                           run_cli, start_cli, wait_for_step)
from tests.unit.run.test_checkpoint import damage

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted full_ft run's record."""
    results = tmp_path_factory.mktemp("reference") / "runs"
    done = run_cli("method=full_ft", *CLI_SMALL, f"results_dir={results}")
    assert done.returncode == 0, done.stderr[-3000:]
    return only_record(results)


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_damaged_checkpoint_is_reported_and_the_relaunch_starts_afresh_to_the_same_record(how, tmp_path,
                                                                                            reference):
    results = tmp_path / "runs"
    command = ["method=full_ft", *CLI_SMALL, f"results_dir={results}", "checkpoint_every=1"]
    log = tmp_path / "first.log"
    proc = start_cli(*command, log=log)
    wait_for_step(proc, tmp_path / "checkpoints", 3, log)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not list(results.rglob("*.json")), "the run finished before it was killed"
    step = newest_step(tmp_path / "checkpoints")
    assert 3 <= step < TOTAL_STEPS
    bad = damage(next((tmp_path / "checkpoints").rglob(f"step-{step:08d}")), how)

    again = run_cli(*command)
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-3000:]
    warnings = [line for line in output.splitlines() if line.startswith("warning: checkpoint:")]
    assert len(warnings) == 1, output[-3000:]
    assert warnings[0].startswith(f"warning: checkpoint: {bad} is {'corrupt' if how == 'flip' else 'truncated'}")
    resumes = re.findall(r"^resumed from .*step-(\d+) at step", output, re.M)   # the loop's line
    if warnings[0].endswith("no intact checkpoint is left, so the run starts afresh"):
        assert resumes == []
    else:   # the kill came after step+1 was renamed into place, before step was dropped: both were there
        previous = re.search(r"resuming from the previous one, step-(\d+)$", warnings[0])
        assert previous and resumes == [previous.group(1)], output[-3000:]
    record = only_record(results)
    assert record["status"] == "ok"
    assert_same_run(record, reference)                          # final_params_sha256 included


def test_a_second_launch_of_a_running_run_stops_with_one_line_and_the_first_finishes(tmp_path, reference):
    results = tmp_path / "runs"
    command = ["method=full_ft", *CLI_SMALL, f"results_dir={results}", "checkpoint_every=1"]
    log = tmp_path / "first.log"
    first = start_cli(*command, log=log)
    try:
        wait_for_step(first, tmp_path / "checkpoints", 1, log)
        first.send_signal(signal.SIGSTOP)                      # holds its folder while the second one starts
        second = run_cli(*command)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2, (second.stdout + second.stderr)[-3000:]
    errors = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, second.stderr[-3000:]
    pattern = (rf"error: checkpoint: {re.escape(str(tmp_path / 'checkpoints'))}/\S.* is in use by another process "
               rf"\(pid {first.pid} on \S+\); is the same run already going\?")
    assert re.fullmatch(pattern, errors[0]), errors[0]
    assert first.wait(timeout=300) == 0, log.read_text()[-3000:]
    record = only_record(results)
    assert record["status"] == "ok"
    assert_same_run(record, reference)
    assert list(Path(tmp_path / "checkpoints").iterdir()) == []  # discarded, lock included
