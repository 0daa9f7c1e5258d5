"""Small things a new user meets: --help lists only the groups they choose from; reproduce_cpu.sh uses the venv's
python and writes nothing committed unless asked; progress bars write whole lines, every N updates, in a log."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.subprocess
@pytest.mark.slow
def test_help_lists_only_the_user_facing_groups():
    proc = subprocess.run([sys.executable, "run.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    groups_part = proc.stdout.split("== Config groups (group=option) ==")[1].split("== Config ")[0]
    groups = [line.split(":")[0] for line in groups_part.strip().splitlines()]
    assert groups == ["model", "task", "method", "logger", "launcher", "experiment", "debug"], groups
    assert "site.example" not in groups_part and "schema/" not in proc.stdout and "study_arm" not in proc.stdout
    assert "debug=fast" in proc.stdout.split("== Config groups")[0]          # the quick real-model run, up front


@pytest.mark.subprocess
def test_reproduce_cpu_needs_the_venv_and_writes_nothing_committed(tmp_path):
    committed = subprocess.run(["git", "status", "--porcelain", "results/cpu"], cwd=ROOT, capture_output=True,
                               text=True).stdout
    env = {**os.environ, "HIZFO_VENV": str(tmp_path / "no-venv")}
    proc = subprocess.run(["bash", "scripts/reproduce_cpu.sh", "table1"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'no-venv'}/bin/python not found: run bash scripts/setup.sh first (or set HIZFO_VENV)"]
    text = (ROOT / "scripts" / "reproduce_cpu.sh").read_text()
    assert 'OUT="${OUT:-outputs/reproduce_cpu}"' in text and '"results_dir=$OUT/runs"' in text
    assert "\npython " not in text and " python -m" not in text                 # always the venv's "$PY"
    assert subprocess.run(["git", "status", "--porcelain", "results/cpu"], cwd=ROOT, capture_output=True,
                          text=True).stdout == committed


def test_a_progress_bar_in_a_log_writes_a_whole_line_every_n_updates(monkeypatch):
    from hizfo.run.progress import progress
    monkeypatch.setenv("HIZFO_PROGRESS_EVERY", "4")
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    log = io.StringIO()                                                       # not a TTY
    bar = progress(total=10, desc="eval", unit="ex", file=log, disable=False)
    for _ in range(10):
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    import re
    assert [re.search(r"(\d+)/10 ", line).group(1) for line in lines] == ["0", "4", "8", "10"], lines
    assert all(line.startswith("eval:") and "ex" in line for line in lines)


def test_debug_fast_composes_a_short_greedy_run_under_its_own_variant():
    """debug=fast (conf/debug/fast.yaml): a few steps and a small greedy evaluation on any model and task, its
    records apart from full runs (the variant), and any key still settable after it."""
    from omegaconf import OmegaConf
    from hizfo.run.runspec import RunSpec
    from tests.conftest import compose
    base = ["model=smollm2-135m", "task=pydoc", "logger=none"]
    full, fast = compose(base), compose([*base, "debug=fast"])
    assert fast.method.max_steps == 4 and fast.task.generation.num_beams == 1 and fast.task.limit == 8
    assert fast.task.train_limit == 16 and fast.task.generation.max_new_tokens == 24
    assert full.task.generation.num_beams > 1 and full.method.max_steps != 4     # what it shortens
    spec = lambda cfg, o: RunSpec.build(OmegaConf.to_container(cfg, resolve=True), o)      # noqa: E731
    assert "debug=fast" in str(spec(fast, [*base, "debug=fast"]).path)
    assert spec(fast, [*base, "debug=fast"]).path != spec(full, base).path
    assert compose([*base, "debug=fast", "method.max_steps=20"]).method.max_steps == 20


FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/../calls.txt"
case "$1" in -c) echo "hizfo env ready: (fake)";; esac
"""


@pytest.mark.subprocess
@pytest.mark.parametrize("first, second", [([], ["--dev"]), (["--dev"], [])])
def test_test_sh_after_setup_sh_only_checks(tmp_path, first, second):
    """scripts/test.sh calls setup.sh --dev; after a plain setup.sh (or the other way round) it must only check, not
    install again: with a lock both make the same environment and share one stamp. A stand-in interpreter records
    what the script asks of it (nothing is installed)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    env = {**os.environ, "HIZFO_VENV": str(venv)}

    def setup(args: list[str]) -> list[str]:
        (venv / "calls.txt").unlink(missing_ok=True)
        proc = subprocess.run(["bash", "scripts/setup.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0 and "hizfo env ready" in proc.stdout, proc.stderr
        return (venv / "calls.txt").read_text().splitlines()

    assert any(call.startswith("-m pip install") for call in setup(first))      # the first call installs
    assert [call for call in setup(second) if not call.startswith("-c ")] == []  # the second only checks
