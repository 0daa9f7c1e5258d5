"""The README's default-run figures are what a fresh clone prints.

The test reads the ``metrics:`` line and the command from the README, runs that command, and compares every
figure the README quotes. One thread makes a run repeat exactly on one machine; across machines the order of
floating-point sums differs, so figures may move a little: ROUGE within 1 point, exact match within 3 examples in
100 (README, "The default run").
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]
TOLERANCE = {"exact_match": 3.0, "before_exact_match": 3.0}
DEFAULT_TOLERANCE = 1.0


def metrics_of(line: str) -> dict[str, float]:
    """``metrics: a=1.00, b=2.00, ...`` -> {a: 1.0, b: 2.0} (a trailing ``...`` is ignored)."""
    return {k: float(v) for k, v in re.findall(r"([\w@]+)=(-?[\d.]+)", line.split("metrics:", 1)[1])}


def readme_default_run() -> tuple[list[str], dict[str, float]]:
    """The overrides of the README's ``python run.py ...`` default-run command and its quoted metrics."""
    text = (ROOT / "README.md").read_text()
    command = re.search(r"ends like this \(`python run\.py([^`]*)`", text)
    assert command, "README: the default run's command is not quoted as `python run.py ...`"
    (line,) = [ln for ln in text.splitlines() if ln.startswith("metrics: ")][:1]
    return command.group(1).split(), metrics_of(line)


def test_readme_default_run_metrics_reproduce(tmp_path):
    overrides, quoted = readme_default_run()
    assert {"rouge1", "before_rouge1"} <= set(quoted), quoted
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    env.pop("TQDM_DISABLE", None)                          # the bars on, as a user sees them: metrics on its own line
    proc = subprocess.run([sys.executable, "run.py", *overrides, "logger=none", f"results_dir={tmp_path}/runs",
                           f"hydra.run.dir={tmp_path}/out"], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:]
    printed = [ln for ln in proc.stdout.splitlines() if ln.startswith("metrics: ")]
    assert len(printed) == 1, proc.stdout[-3000:]            # `grep '^metrics'` finds it in a merged log
    measured = metrics_of(printed[0])
    for key, value in quoted.items():
        tolerance = TOLERANCE.get(key, DEFAULT_TOLERANCE)
        assert abs(measured[key] - value) <= tolerance, f"{key}: README {value}, run {measured[key]}"
