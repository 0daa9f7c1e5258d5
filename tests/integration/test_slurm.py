"""A real one-node Slurm: launcher=slurm submits a job array that writes ok records; a relaunched sweep trains
nothing; SIGUSR1 mid-run checkpoints, requeues through submitit and the requeued job resumes; bad partitions
and too short time limits are refused before sbatch.

Uses the cluster that scripts/ci_slurm.sh started (HIZFO_SLURM_DIR / SLURM_CONF in the environment), else starts
one with scripts/slurm/start_local_slurm.sh (root; installs slurm-wlm and munge with apt-get) and stops every
daemon it started, by PID, at the end. Skips, saying why, where neither is possible.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, finished_checkpoints

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

SCRIPTS = ROOT / "scripts" / "slurm"
SMALL = ["logger=none", "device=cpu", "task.options.n_train=32", "task.batch_size=4", "task.options.n_eval=8",
         "task.generation.max_new_tokens=4", "eval_before_training=false"]


def _read_env(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("export ") and "=" in line:
            key, value = line[len("export "):].split("=", 1)
            out[key] = value
    return out


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> dict[str, str]:
    """The environment (SLURM_CONF, partition) of a running one-node cluster."""
    existing = os.environ.get("HIZFO_SLURM_DIR")
    if existing and (Path(existing) / "env").exists():
        yield {**_read_env(Path(existing) / "env")}
        return
    if os.geteuid() != 0:
        pytest.skip("a local Slurm needs root (apt-get install slurm-wlm munge, munged, slurmd); "
                    "run scripts/ci_slurm.sh as root")
    state_dir = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", str(SCRIPTS / "start_local_slurm.sh"), str(state_dir)], capture_output=True,
                             text=True, timeout=900)
    if started.returncode == 77:
        pytest.skip(f"cannot start a local Slurm here: {started.stderr.strip().splitlines()[-1]}")
    try:
        assert started.returncode == 0, f"start_local_slurm.sh failed:\n{started.stderr[-4000:]}"
        yield _read_env(state_dir / "env")
    finally:
        subprocess.run(["bash", str(SCRIPTS / "stop_local_slurm.sh"), str(state_dir)], timeout=120)


def slurm_env(slurm: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **slurm, "TQDM_DISABLE": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1"}


def launcher_args(slurm: dict[str, str], sweep_dir: Path) -> list[str]:
    """launcher=slurm sized for the test node: no GPUs, one CPU a job, no memory request."""
    return ["launcher=slurm", f"hydra.launcher.partition={slurm['HIZFO_SLURM_PARTITION']}",
            "hydra.launcher.gpus_per_node=null", "hydra.launcher.mem_gb=null", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.timeout_min=30", "hydra.callbacks.slurm_preflight.checkpoint_minutes=5",
            f"hydra.sweep.dir={sweep_dir}"]


def run_sweep(slurm: dict[str, str], *overrides: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", "-m", *overrides], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=slurm_env(slurm))


def job_logs(sweep_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((sweep_dir / ".submitit").rglob("*_log.*")))


def test_a_two_method_sweep_runs_as_a_job_array_and_a_relaunch_trains_nothing(slurm, tmp_path):
    results = tmp_path / "runs"
    sweep_dir = tmp_path / "multirun"
    args = [*launcher_args(slurm, sweep_dir), "method=full_ft,ft_top2", *SMALL, "method.max_steps=3",
            f"results_dir={results}"]
    first = run_sweep(slurm, *args)
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:] + job_logs(sweep_dir)[-4000:]
    records = {p: json.loads(p.read_text()) for p in results.rglob("*.json")}
    assert sorted(r["config"]["method"]["name"] for r in records.values()) == ["ft_top2", "full_ft"]
    assert all(r["status"] == "ok" and r["costs"]["steps"] == 3 for r in records.values())
    # submitit's folder per job: <array>_<index>, or the job id alone for an array of one job
    array_tasks = sorted(p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir())
    # one array per method x task, each named hizfo-<method>-<task> (hizfo/run/slurm_launcher.py)
    assert len(array_tasks) == 2 and len({name.split("_")[0] for name in array_tasks}) == 2, array_tasks
    assert "sweep summary: 2 jobs: 2 ok, 0 failed, 0 skipped" in first.stdout, first.stdout[-3000:]
    stamps = {p: p.stat().st_mtime_ns for p in records}

    relaunch_dir = tmp_path / "multirun-again"
    again = run_sweep(slurm, *[a if not a.startswith("hydra.sweep.dir=") else f"hydra.sweep.dir={relaunch_dir}"
                               for a in args])
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert job_logs(relaunch_dir).count("skip: ok record exists") == 2
    assert {p: p.stat().st_mtime_ns for p in results.rglob("*.json")} == stamps


def test_a_failed_slurm_job_reaches_the_terminal_with_its_error_and_its_log(slurm, tmp_path):
    """The sweep's summary on the submitting terminal names a job that failed on the cluster: its error, where its
    log is (submitit's .err under the sweep's .submitit/) and that log's last lines; the sweep exits non-zero."""
    sweep_dir = tmp_path / "multirun"
    proc = run_sweep(slurm, *launcher_args(slurm, sweep_dir), "method=full_ft", "seed=1,-1", *SMALL,
                     "method.max_steps=2", f"results_dir={tmp_path / 'runs'}")
    assert proc.returncode != 0, (proc.stdout + proc.stderr)[-4000:]
    summary = proc.stdout[proc.stdout.index("sweep summary:"):].splitlines()
    assert summary[0].startswith("sweep summary: 2 jobs: 1 ok, 1 failed, 0 skipped"), summary
    failed = next(i for i, line in enumerate(summary) if " failed " in line and "seed=-1" in line)
    assert summary[failed + 2] == "       error: ConfigError: seed: must be >= 0, got -1", summary
    log = Path(summary[failed + 3].split("log: ")[1].split(" (last lines)")[0])
    log = log if log.is_absolute() else ROOT / log
    assert log.is_file() and log.name.endswith("_log.err") and sweep_dir / ".submitit" in log.parents, summary
    assert "       | error: seed: must be >= 0, got -1" in summary[failed + 4:], summary


def test_sigusr1_mid_run_checkpoints_requeues_and_the_requeued_job_resumes(slurm, tmp_path):
    results = tmp_path / "runs"
    sweep_dir = tmp_path / "multirun"
    env = slurm_env(slurm)
    proc = subprocess.Popen([sys.executable, "run.py", "-m", *launcher_args(slurm, sweep_dir), "method=full_ft",
                             *SMALL, "task.options.n_train=320", "method.max_steps=200", "checkpoint_every=2",
                             f"results_dir={results}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    # 200 steps (80 an epoch) of about 23 ms with their checkpoints, 4.7 s of training: the signal reaches a run
    # still training (at 40 steps, the 38 after the first checkpoint took under a second, a window a stalled test
    # process could miss)
    try:
        checkpoints = tmp_path / "checkpoints"
        deadline = time.time() + 600
        while not finished_checkpoints(checkpoints) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert finished_checkpoints(checkpoints), "no checkpoint appeared"
        job_ids = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, env=env).stdout.split()
        assert len(job_ids) == 1, job_ids
        subprocess.run(["scancel", "--signal=USR1", job_ids[0]], check=True, env=env)
        skip_requeue_delay(job_ids[0], env)
        output, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    logs = job_logs(sweep_dir)
    assert proc.returncode == 0, output[-4000:] + logs[-6000:]
    assert "SIGUSR1 received" in logs and "passing the signal on" in logs, logs[-6000:]
    assert "Requeued job" in logs, logs[-6000:]
    assert "resumed from" in logs, logs[-6000:]
    record = json.loads(next(results.rglob("*.json")).read_text())
    assert record["status"] == "ok" and record["costs"]["steps"] == 200
    assert not checkpoints.exists() or not list(checkpoints.rglob("step-*"))


def skip_requeue_delay(job_id: str, env: dict[str, str], timeout: float = 300) -> None:
    """Slurm holds a requeued job about two minutes (Reason=BeginTime); release it early to keep the test short.

    Not at once: slurmd refuses a job credential created in the same second as the previous run's revocation
    (``ctime <= revoked``: "Killing non-startable batch JobId=…: Job credential revoked", and the sweep then waits
    on a job that will never write its result), so the release waits 2 s past the requeue.
    """
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = subprocess.run(["squeue", "-h", "-j", job_id.split("_")[0], "-o", "%T %r"], capture_output=True,
                               text=True, env=env).stdout.split()
        if state[:2] == ["PENDING", "BeginTime"]:
            time.sleep(2.0)
            subprocess.run(["scontrol", "update", f"JobId={job_id.split('_')[0]}", "StartTime=now"], env=env)
            return
        if not state:
            return
        time.sleep(0.2)


def test_a_partition_that_does_not_exist_is_refused_before_sbatch(slurm, tmp_path):
    sweep_dir = tmp_path / "multirun"
    args = [a if not a.startswith("hydra.launcher.partition=") else "hydra.launcher.partition=no-such-partition"
            for a in launcher_args(slurm, sweep_dir)]
    done = run_sweep(slurm, *args, "method=full_ft", *SMALL, f"results_dir={tmp_path / 'runs'}", timeout=300)
    assert done.returncode != 0
    assert "'no-such-partition' does not exist on this cluster; partitions: " \
           f"{slurm['HIZFO_SLURM_PARTITION']}" in done.stderr, done.stderr[-3000:]
    assert not (sweep_dir / ".submitit").exists()                # nothing was submitted


def test_a_time_limit_shorter_than_the_checkpoint_interval_is_refused_before_sbatch(slurm, tmp_path):
    sweep_dir = tmp_path / "multirun"
    done = run_sweep(slurm, *launcher_args(slurm, sweep_dir), "hydra.launcher.timeout_min=10",
                     "hydra.callbacks.slurm_preflight.checkpoint_minutes=30", "method=full_ft", *SMALL,
                     f"results_dir={tmp_path / 'runs'}", timeout=300)
    assert done.returncode != 0
    assert "timeout_min=10 leaves 8.0 min before Slurm's time-limit signal" in done.stderr, done.stderr[-3000:]
    assert not (sweep_dir / ".submitit").exists()


def test_a_job_asking_more_cpus_or_memory_than_the_node_has_is_refused_before_sbatch(slurm, tmp_path):
    """The launcher's default 8 CPUs on this one-node cluster's node (nproc CPUs: 2 on the CI machine): sbatch
    would accept the array and it would pend for ever (Reason=PartitionConfig); the pre-flight refuses it."""
    env = slurm_env(slurm)
    cpus, mem_mb = (int(v.rstrip("+")) for v in subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%c %m", "-p", slurm["HIZFO_SLURM_PARTITION"]], capture_output=True, text=True,
        env=env, check=True).stdout.split()[:2])
    for key, asked, offered in (("cpus_per_task", max(8, cpus + 1), f"has at most {cpus} CPUs a node"),
                                ("mem_gb", mem_mb // 1024 + 2, f"has at most {mem_mb} MB")):
        sweep_dir = tmp_path / f"multirun-{key}"
        args = [a if not a.startswith(f"hydra.launcher.{key}=") else f"hydra.launcher.{key}={asked}"
                for a in launcher_args(slurm, sweep_dir)]
        done = run_sweep(slurm, *args, "method=full_ft", *SMALL, f"results_dir={tmp_path / 'runs'}", timeout=300)
        assert done.returncode == 2, done.stderr[-3000:]
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(
            f"error: hydra.launcher.{key}={asked}: partition '{slurm['HIZFO_SLURM_PARTITION']}' {offered}"), \
            done.stderr[-3000:]
        assert not (sweep_dir / ".submitit").exists()            # nothing was submitted
