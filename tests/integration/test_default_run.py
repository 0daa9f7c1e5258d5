"""End to end: the offline default `python run.py`, what it logged to W&B, and two-method multiruns."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_default_run_learns_the_toy_task_and_logs_to_wandb(default_run):
    """The README's default run (tests/readme_run.py): it learns, and W&B offline holds every step."""
    from hizfo.run.tracking import read_offline_run
    assert default_run.returncode == 0, default_run.output[-3000:]    # its speed is in the README, not asserted
    (path,) = (default_run.folder / "runs").rglob("seed0.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok" and record["config"]["method"]["name"] == "hizfo"
    metrics = record["metrics"]
    assert metrics["rouge1"] >= metrics["before_rouge1"] + 20, metrics
    assert f"record: {path}" in default_run.output
    wandb_line = next(line for line in default_run.output.splitlines() if line.startswith("wandb: "))
    run_dir = wandb_line.split("wandb: ", 1)[1].strip()
    assert run_dir.startswith(str(default_run.folder / "out"))
    logged = read_offline_run(run_dir)
    losses = [row["train/loss"] for row in logged["history"] if "train/loss" in row]
    assert len(losses) == record["costs"]["steps"]
    assert len(record["zo_seeds"]) == record["costs"]["steps"] == len(set(record["zo_seeds"]))
    assert all("train/lr" in row for row in logged["history"] if "train/loss" in row)
    assert logged["summary"]["eval/rouge1"] == pytest.approx(metrics["rouge1"])
    assert logged["summary"]["costs/peak_memory_gb"] == pytest.approx(record["costs"]["peak_memory_gb"])
    assert logged["summary"]["costs/train_seconds"] == pytest.approx(record["costs"]["train_seconds"])
    assert logged["config"]["method"]["name"] == "hizfo"
    # Hydra's job log of a single run holds what the terminal showed (hizfo/run/sweep_summary.py tees into it)
    log = (default_run.folder / "out" / "run.log").read_text()
    assert f"record: {path}" in log and next(l for l in log.splitlines() if l.startswith("metrics: "))


@pytest.mark.parametrize("launcher", ["basic", "submitit_local"])
def test_two_method_multirun_writes_two_records(tmp_path, launcher):
    """A local multirun: one ok record per job; with Hydra's basic launcher, W&B (offline) too, each job's run in
    the sweep's group (its command line, stable across a relaunch: hizfo/run/tracking.py run_group), typed by its
    method."""
    logger = "logger=wandb" if launcher == "basic" else "logger=none"
    args = ["-m", "method=full_ft,ft_top2", logger, f"results_dir={tmp_path}/results",
            "task.options.n_train=64", "task.options.n_eval=8", "method.max_steps=5",
            f"hydra.sweep.dir={tmp_path}/multirun"]
    if launcher == "submitit_local":
        args += ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]
    proc = _run(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = sorted((tmp_path / "results").rglob("seed0.json"))
    assert [p.parts[-3] for p in records] == ["ft_top2", "full_ft"]
    assert all(json.loads(p.read_text())["status"] == "ok" for p in records)
    if launcher == "basic":
        from hizfo.run.tracking import read_offline_runs
        runs = read_offline_runs(tmp_path / "multirun").values()
        assert sorted(run["job_type"] for run in runs) == ["ft_top2", "full_ft"]
        group = " ".join(sorted(a for a in args[1:] if not a.startswith("hydra.")))   # the sweep's command line
        group = group if len(group) <= 128 else group[:114]               # W&B's limit: a start and a hash
        assert len(runs) == 2 and all(run["group"].startswith(group) for run in runs), [r["group"] for r in runs]
