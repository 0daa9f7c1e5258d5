"""Exact resume through run.py: SIGKILL / SIGTERM mid-run and relaunch with the same command gives the record an
uninterrupted run gives; a checkpoint of another config is refused; a finished sweep relaunched trains nothing;
model.device_map=auto runs every method."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, compose
from tests.unit.run.test_checkpoint import RESUME_CASES, check_resume_is_exact, closing  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow

TOTAL_STEPS = 16
# 64 examples / batch 4 = 16 steps an epoch: the runs cross an epoch boundary.
# One torch thread: with two, 2 of 42 fresh runs of this command on the 2-core box profiled Hi-ZFO's
# importances ~1e-5 (relative) differently, which flips a ~1e-14 importance's sign and the partition with it
# (an open nondeterminism, not a resume defect: README, "Bitwise replay"); 40 one-thread runs were bit-identical.
CLI_SMALL = ["logger=none", "device=cpu", "task.options.n_train=64", "task.batch_size=4", "task.options.n_eval=8",
             "task.generation.max_new_tokens=4", f"method.max_steps={TOTAL_STEPS}", "eval_before_training=false",
             "num_threads=1"]
COMPARED = ("metrics", "final_params_sha256", "final_train_loss", "zo_seeds", "config_hash")


def _env() -> dict[str, str]:
    return {**os.environ, "TQDM_DISABLE": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1"}


def run_cli(*overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python run.py <overrides>`` to completion."""
    return subprocess.run([sys.executable, "run.py", *overrides], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=_env())


def start_cli(*overrides: str, log: Path) -> subprocess.Popen:
    handle = open(log, "w")
    return subprocess.Popen([sys.executable, "run.py", *overrides], cwd=ROOT, stdout=handle,
                            stderr=subprocess.STDOUT, env=_env())


def only_record(results_dir: Path) -> dict:
    records = list(results_dir.rglob("*.json"))
    assert len(records) == 1, records
    return json.loads(records[0].read_text())


def newest_step(folder: Path) -> int:
    """The newest finished checkpoint's step (-1 for none); temp folders vanish mid-scan as they are renamed."""
    try:
        steps = [int(p.name.split("-")[1]) for p in folder.rglob("step-*") if p.is_dir()]
    except FileNotFoundError:
        return -1
    return max(steps, default=-1)


def wait_for_step(proc: subprocess.Popen, folder: Path, at_least: int, log: Path, timeout: float = 300) -> int:
    """Poll until a checkpoint of step >= ``at_least`` exists (the process still running); its step."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        step = newest_step(folder)
        if step >= at_least:
            return step
        if proc.poll() is not None:
            pytest.fail(f"run ended (rc {proc.returncode}) before step {at_least} was checkpointed:\n"
                        f"{log.read_text()[-3000:]}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"no checkpoint of step >= {at_least} within {timeout} s:\n{log.read_text()[-3000:]}")


def assert_same_run(resumed: dict, reference: dict) -> None:
    for key in COMPARED:
        assert resumed[key] == reference[key], key
    for key in ("n_forward", "n_backward", "steps"):
        assert resumed["costs"][key] == reference["costs"][key], key


@pytest.fixture(scope="module")
def reference_records(tmp_path_factory) -> dict[str, dict]:
    """Uninterrupted runs, one per method used below."""
    out = {}
    for method in ("hizfo", "full_ft"):
        results = tmp_path_factory.mktemp(f"reference-{method}") / "runs"
        done = run_cli(f"method={method}", *CLI_SMALL, f"results_dir={results}")
        assert done.returncode == 0, done.stderr[-3000:]
        out[method] = only_record(results)
    return out


@pytest.mark.subprocess
def test_sigkill_at_a_random_step_then_the_same_command_resumes_and_matches(tmp_path, reference_records):
    """SIGKILL right after the checkpoint of a random step k appears (checkpoint_every=1), relaunch: the record
    equals the uninterrupted run's (metrics, final parameters' hash, losses, ZO seeds, passes counted)."""
    kill_after = random.Random().randint(2, TOTAL_STEPS // 3)     # leaves >= 11 steps of margin before the end
    results = tmp_path / "runs"
    command = ["method=hizfo", *CLI_SMALL, f"results_dir={results}", "checkpoint_every=1"]
    log = tmp_path / "first.log"
    proc = start_cli(*command, log=log)
    step = wait_for_step(proc, tmp_path / "checkpoints", kill_after, log)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not list(results.rglob("*.json")), "the run finished before it was killed"
    killed_at = newest_step(tmp_path / "checkpoints")
    assert step <= killed_at < TOTAL_STEPS, (step, killed_at)

    again = run_cli(*command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"at step {killed_at}" in again.stdout + again.stderr, (again.stdout + again.stderr)[-3000:]
    assert_same_run(only_record(results), reference_records["hizfo"])
    assert not list((tmp_path / "checkpoints").rglob("step-*"))  # discarded once the ok record was written
    assert list((tmp_path / "checkpoints").iterdir()) == []      # with the run's now empty folders


@pytest.mark.subprocess
def test_sigterm_checkpoints_ends_the_run_and_the_relaunch_matches(tmp_path, reference_records):
    """SIGTERM (Slurm preemption) with no periodic checkpoints due: the run finishes its step, checkpoints,
    ends by the signal; the same command resumes from that step."""
    results = tmp_path / "runs"
    command = ["method=full_ft", *CLI_SMALL, f"results_dir={results}", "checkpoint_every=5"]
    log = tmp_path / "first.log"
    proc = start_cli(*command, log=log)
    wait_for_step(proc, tmp_path / "checkpoints", 5, log)      # training is under way
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    output = log.read_text()
    assert proc.returncode == -signal.SIGTERM, output[-3000:]
    assert "SIGTERM received" in output and "passing the signal on" in output, output[-3000:]
    saved = newest_step(tmp_path / "checkpoints")
    info = json.loads(next((tmp_path / "checkpoints").rglob("state.json")).read_text())
    # the 11 steps after step 5 take a few tenths of a second: a signal that a stalled test process sends late
    # lands in the evaluation, after the end-of-training checkpoint, which the relaunch resumes to evaluate again
    assert 5 <= saved <= TOTAL_STEPS
    assert info["reason"] in ("SIGTERM", "periodic", "end of training")   # periodic: SIGTERM at step 10 or 15

    again = run_cli(*command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"at step {saved}" in again.stdout + again.stderr
    record = only_record(results)
    assert_same_run(record, reference_records["full_ft"])
    # the record says it was resumed, and its time holds the first process's training up to the checkpoint
    assert record["costs"]["segments"] == 2
    assert info["meters"]["train_seconds"] > 0
    assert record["costs"]["train_seconds"] >= info["meters"]["train_seconds"]


@pytest.mark.subprocess
def test_a_checkpoint_of_another_config_at_the_same_record_path_is_refused(tmp_path):
    """variant=fixed pins the record path; a different lr under it must not resume the first run's checkpoint."""
    results = tmp_path / "runs"
    log = tmp_path / "first.log"
    proc = start_cli("method=full_ft", *CLI_SMALL, f"results_dir={results}", "variant=fixed", "method.lr=1e-3",
                     "checkpoint_every=2", log=log)
    wait_for_step(proc, tmp_path / "checkpoints", 2, log)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    left = sorted(p.name for p in (tmp_path / "checkpoints").rglob("step-*"))
    assert left

    other = run_cli("method=full_ft", *CLI_SMALL, f"results_dir={results}", "variant=fixed", "method.lr=2e-3",
                    "checkpoint_every=2")
    assert other.returncode == 2, other.stderr[-3000:]
    assert "error: checkpoint:" in other.stderr and "will not be resumed" in other.stderr, other.stderr[-3000:]
    assert not list(results.rglob("*.json"))                    # no record, not even a failed one
    assert sorted(p.name for p in (tmp_path / "checkpoints").rglob("step-*")) == left   # left as it was


@pytest.mark.subprocess
def test_a_finished_sweep_relaunched_trains_nothing(tmp_path):
    results = tmp_path / "runs"
    sweep = ["-m", "method=full_ft,ft_top2", *CLI_SMALL, "method.max_steps=2", f"results_dir={results}",
             f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    first = run_cli(*sweep)
    assert first.returncode == 0, first.stderr[-3000:]
    records = sorted(results.rglob("*.json"))
    assert len(records) == 2
    stamps = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in records}

    second = run_cli(*sweep)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("skip: ok record exists") == 2, second.stdout
    assert "metrics:" not in second.stdout                        # nothing trained or evaluated
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(results.rglob("*.json"))} == stamps


def _training_methods() -> list[str]:
    names = sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml"))
    return [m for m in names if compose([f"method={m}"]).method.max_steps != 0]


# peft's prefix tuning looks for a non-CPU device in hf_device_map (peft/utils/integrations.py,
# get_layer_device_map) and raises StopIteration when accelerate placed everything on cpu


@pytest.mark.subprocess
def test_device_map_auto_runs_every_method_on_cpu(tmp_path):
    """accelerate's device_map=auto over a tiny model on a CPU-only machine places everything on cpu and
    every method trains and evaluates through it (prefix: see the next test)."""
    methods = _training_methods()
    results = tmp_path / "runs"
    done = run_cli("-m", f"method={','.join(methods)}", *CLI_SMALL, "method.max_steps=2", "model.device_map=auto",
                   f"results_dir={results}", f"hydra.sweep.dir={tmp_path / 'multirun'}")
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    records = [json.loads(p.read_text()) for p in results.rglob("*.json")]
    assert sorted(r["config"]["method"]["name"] for r in records) == methods
    for record in records:
        assert record["status"] == "ok" and record["config"]["model"]["device_map"] == "auto"
        assert record["costs"]["steps"] == 2


@pytest.mark.parametrize("method_name", [m for m in ("bilevel_zofo", "ft_top2", "greentrainer", "lora", "prefix")
                                         if m not in {c[0] for c in RESUME_CASES}])
def test_every_other_method_resumes_exactly_in_process(method_name, tmp_path, closing):  # noqa: F811
    if not (ROOT / "conf" / "method" / f"{method_name}.yaml").exists():
        pytest.skip(f"method {method_name} is not in conf/method yet")
    check_resume_is_exact(method_name, 3, tmp_path, closing)


def test_greentrainer_resumes_exactly_across_a_reselection(tmp_path, closing):  # noqa: F811
    check_resume_is_exact("greentrainer", 3, tmp_path, closing, extra=("method.interval=1",))
