"""The README's default-run figures are what a fresh clone prints.

The test reads the ``metrics:`` line and the command from the README, runs that command, and compares every
figure the README quotes. One thread makes a run repeat exactly on one machine; across machines the order of
floating-point sums differs, so figures may move a little: ROUGE within 1 point, exact match within 3 examples in
100 (README, "The default run").
"""
from __future__ import annotations

import pytest

from tests.readme_run import metrics_of, readme_default_run

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]     # the run: tests/readme_run.py
TOLERANCE = {"exact_match": 3.0, "before_exact_match": 3.0}
DEFAULT_TOLERANCE = 1.0


def test_readme_default_run_metrics_reproduce(default_run):
    _, quoted = readme_default_run()
    assert {"rouge1", "before_rouge1"} <= set(quoted), quoted
    assert default_run.returncode == 0, default_run.output[-3000:]
    printed = [ln for ln in default_run.output.splitlines() if ln.startswith("metrics: ")]
    assert len(printed) == 1, default_run.output[-3000:]    # `grep '^metrics'` finds it in a merged log
    measured = metrics_of(printed[0])
    for key, value in quoted.items():
        tolerance = TOLERANCE.get(key, DEFAULT_TOLERANCE)
        assert abs(measured[key] - value) <= tolerance, f"{key}: README {value}, run {measured[key]}"
