"""The README's default run, run once (the ``default_run`` fixture, tests/conftest.py) for the tests that read it
(tests/integration/test_readme_figures.py: the figures the README quotes; test_default_run.py: the record and what
W&B logged). It runs as a user's does: the README's command, W&B offline (the default logger), progress bars on,
stdout and stderr in one stream. Not a conftest.py: a second module named ``conftest`` would shadow the one the
unit tests import from."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT


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


@dataclass(frozen=True)
class DefaultRun:
    returncode: int
    output: str             # stdout and stderr, as a terminal shows them
    folder: Path            # results_dir is folder/runs, Hydra's run folder (W&B's files) folder/out


def run_default(folder: Path) -> DefaultRun:
    overrides, _ = readme_default_run()
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    env.pop("TQDM_DISABLE", None)                          # the bars on, as a user sees them
    proc = subprocess.run([sys.executable, "run.py", *overrides, f"results_dir={folder}/runs",
                           f"hydra.run.dir={folder}/out"], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900, env=env)
    return DefaultRun(proc.returncode, proc.stdout, folder)
