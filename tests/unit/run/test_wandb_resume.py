"""W&B (the real client, offline): one W&B run per record across resumes, grouped, with eval rows and a memory series.

A killed process and the process that resumes its run log into the same W&B run id (``resume="allow"``); offline
each writes its own folder and ``read_offline_runs`` reads them back as one run holding every step.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import read_until as _read_until

ROOT = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "TQDM_DISABLE": "1", "WANDB_SILENT": "true"}


LOGGING = """
import os, sys
from pathlib import Path
from hizfo.run.tracking import Tracker
first, last, killed = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "kill"
config = {"results_dir": sys.argv[4], "seed": 0, "method": {"name": "hizfo"}, "model": {"name": "m"},
          "task": {"name": "t"}, "logger": {"memory_every": 2}, "experiment": "my_sweep"}
tracker = Tracker(kind="wandb", project="p", mode="offline", run_dir=Path(sys.argv[5]), name="m/t/hizfo/default/seed0",
                  config=config)
for step in range(first, last + 1):
    tracker.log(step, {"train/loss": 1.0 / step})
tracker.log_epoch_eval(last, {"epoch": 1, "step": last, "eval_loss": 0.5, "metrics": {"rougeL": 12.0}})
if killed:                            # preempted: SIGTERM passed on by the relay, as the checkpointer does
    import signal
    from hizfo.run.signals import RELAY
    RELAY.pass_on(signal.SIGTERM, None)
    raise SystemExit("not reached: SIGTERM's default action ends the process")
tracker.finish()
"""


@pytest.mark.subprocess
@pytest.mark.slow
def test_a_killed_and_resumed_tracker_is_one_wandb_run_holding_every_step(tmp_path):
    from hizfo.run.tracking import read_offline_runs
    script = tmp_path / "log.py"
    script.write_text(LOGGING)
    runs = str(tmp_path / "runs")
    for first, last, how, folder in ((1, 6, "kill", "job1"), (5, 10, "finish", "job2")):   # 5-6 logged twice
        subprocess.run([sys.executable, str(script), str(first), str(last), how, runs, str(tmp_path / folder)],
                       cwd=ROOT, env=ENV, check=how == "finish", timeout=300, capture_output=True)
    found = read_offline_runs(tmp_path)
    assert len(found) == 1, found.keys()                           # one W&B run, not one per process
    (run_id, run), = found.items()
    assert run_id.startswith("hz-") and len(run["folders"]) == 2
    steps = [row["_step"] for row in run["history"]]
    assert steps == list(range(1, 11)), steps
    assert {row["_step"] for row in run["history"] if "memory/rss_gb" in row} == {2, 4, 6, 8, 10}
    assert {row["_step"]: row["eval/loss"] for row in run["history"] if "eval/loss" in row} == {6: 0.5, 10: 0.5}
    assert run["group"] == "my_sweep" and run["job_type"] == "hizfo"


@pytest.mark.subprocess
@pytest.mark.slow
def test_run_py_preempted_then_resumed_is_one_wandb_run_holding_every_step(tmp_path):
    """run.py for real: SIGTERM mid-training (checkpoint, then the process ends), the same command again resumes;
    the two processes' offline folders are one W&B run with every training step once, and the eval loss."""
    from hizfo.run.tracking import read_offline_runs
    common = ["run.py", "method=full_ft", "method.max_steps=150", "method.epochs=50", "num_threads=1",
              "logger.memory_every=5", f"results_dir={tmp_path / 'runs'}", f"checkpoint_dir={tmp_path / 'ckpt'}"]
    with_bar = {k: v for k, v in ENV.items() if k != "TQDM_DISABLE"}          # the train bar: training began
    first = subprocess.Popen([sys.executable, *common, f"hydra.run.dir={tmp_path / 'out1'}"], cwd=ROOT,
                             env=with_bar, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        early = _read_until(first.stdout.fileno(), b"train:", timeout=300)
        time.sleep(1.0)                                         # some steps in
        first.send_signal(signal.SIGTERM)
        out1 = (early + first.communicate(timeout=300)[0]).decode(errors="replace")
    finally:
        if first.poll() is None:
            first.kill()
    assert list((tmp_path / "ckpt").rglob("step-*")), out1[-3000:]           # it checkpointed
    second = subprocess.run([sys.executable, *common, f"hydra.run.dir={tmp_path / 'out2'}"], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and "resumed from" in second.stdout + second.stderr, second.stderr[-3000:]
    found = read_offline_runs(tmp_path)
    assert len(found) == 1, list(found)
    run = next(iter(found.values()))
    steps = sorted({row["_step"] for row in run["history"] if "train/loss" in row})
    assert steps == list(range(1, 151)), steps
    import inspect
    from hizfo.run import loop
    if "eval/loss" in inspect.getsource(loop):                  # the loop logs its epoch-end eval loss
        assert any("eval/loss" in row for row in run["history"])
    assert any("memory/rss_gb" in row for row in run["history"])
    assert run["job_type"] == "full_ft"


def test_a_relaunched_sweep_keeps_its_wandb_group(tmp_path):
    """The group is the sweep's command line (Hydra's multirun.yaml in the sweep folder), not the folder's time:
    the same sweep launched again, into a new folder, groups with the first."""
    from omegaconf import OmegaConf

    from hizfo.run.tracking import GROUP_CHARS, run_group

    def sweep(folder: str, overrides: list[str]) -> Path:
        path = tmp_path / "multirun" / "2026-12-08" / folder
        path.mkdir(parents=True)
        OmegaConf.save({"hydra": {"overrides": {"hydra": ["hydra.mode=MULTIRUN"], "task": overrides}}},
                       path / "multirun.yaml")
        return path

    first = sweep("01-00-00", ["seed=0,1", "method=full_ft,hizfo"])
    again = sweep("02-00-00", ["method=full_ft,hizfo", "seed=0,1"])
    other = sweep("03-00-00", ["method=full_ft,hizfo", "seed=2,3"])
    assert run_group(None, first) == run_group(None, again) == "method=full_ft,hizfo seed=0,1"
    assert run_group(None, other) == "method=full_ft,hizfo seed=2,3"
    assert run_group("table3", first) == "table3"                              # a preset names its group
    (tmp_path / "multirun" / "2026-12-08" / "04-00-00").mkdir()
    assert run_group(None, tmp_path / "multirun" / "2026-12-08" / "04-00-00") == "2026-12-08/04-00-00"
    long = [f"method.lr={x}" for x in range(0, 400, 7)]
    a, b = run_group(None, sweep("05-00-00", long)), run_group(None, sweep("06-00-00", long[:-1]))
    assert len(a) <= GROUP_CHARS and len(b) <= GROUP_CHARS and a != b and a[:100] == b[:100]
