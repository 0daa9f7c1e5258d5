"""A sweep ends with a summary (hizfo/run/sweep_summary.py): per job its overrides, ok / failed / skipped, the record;
a failed job's last log lines and the log's path; exit status 1 when any job failed."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1", "WANDB_MODE": "offline"}


def sweep(tmp_path: Path, seeds: str, name: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", "-m", "logger=none", "method=zero_shot", "num_threads=1",
                           f"seed={seeds}", f"results_dir={tmp_path / 'runs'}", f"hydra.sweep.dir={tmp_path / name}"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.mark.subprocess
@pytest.mark.slow
def test_a_local_sweep_with_a_failing_job_ends_with_its_summary_and_a_nonzero_exit(tmp_path):
    proc = sweep(tmp_path, "0,-1", "sweep1")
    assert proc.returncode == 2, proc.stderr[-3000:]        # non-zero: 2, the failure is a config error
    out = proc.stdout
    summary = out[out.index("sweep summary:"):].splitlines()
    assert summary[0].startswith("sweep summary: 2 jobs: 1 ok, 1 failed, 0 skipped"), summary
    ok = summary.index(next(line for line in summary if "#0" in line))
    assert " ok " in summary[ok] and "seed=0" in summary[ok]
    assert summary[ok + 1].strip().endswith("zero_shot/default/seed0.json"), summary
    assert Path(summary[ok + 1].split("record: ")[1]).is_file() or (ROOT / summary[ok + 1].split("record: ")[1]).is_file()
    failed = next(i for i, line in enumerate(summary) if "#1" in line)
    assert " failed " in summary[failed] and "seed=-1" in summary[failed]
    assert "error: ConfigError: seed: must be >= 0, got -1" in summary[failed + 2]
    log_line = summary[failed + 3]
    log = Path(log_line.split("log: ")[1].split(" (last lines)")[0])
    log = log if log.is_absolute() else ROOT / log
    assert log.is_file() and log.parent.parent == tmp_path / "sweep1", log_line
    assert summary[failed + 4] == "       | error: seed: must be >= 0, got -1", summary   # the log's last lines
    assert "Traceback" not in proc.stderr

    again = sweep(tmp_path, "0", "sweep2")                 # its ok record exists: skipped, and exit 0
    assert again.returncode == 0, again.stderr[-3000:]
    assert "sweep summary: 1 jobs: 0 ok, 0 failed, 1 skipped" in again.stdout


def test_the_job_log_keeps_whole_lines_of_a_redrawn_progress_bar():
    from hizfo.run.sweep_summary import Tee
    terminal, log = io.StringIO(), io.StringIO()
    tee = Tee(terminal, log)
    for text in ("start\n", "\rbar 1/3", "\rbar 2/3", "\rbar 3/3", "\n", "done\n"):
        tee.write(text)
    assert log.getvalue() == "start\nbar 3/3\ndone\n"
    assert terminal.getvalue().endswith("\rbar 3/3\ndone\n")      # the terminal gets everything as written
