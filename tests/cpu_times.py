"""CPU seconds per test, listed at the end of a run beside pytest's ``--durations`` (wall seconds).

On a shared box the wall seconds of a test measure the box as much as the test (the same test took 15 s alone and
132 s in a loaded suite); its CPU seconds do not: those of the pytest process and of every process it waited for
(``os.times``: children's times count once they are reaped, and torchrun's workers are reaped by torchrun), from
set-up to teardown. A daemon a test leaves running (slurmctld) is not counted. Registered by tests/conftest.py.
"""
from __future__ import annotations

import os
from collections import defaultdict
from typing import Generator

import pytest

TOP = 20


def cpu_seconds() -> float:
    """This process's CPU seconds and its reaped children's."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class CpuTimes:
    """Collects each test's CPU seconds; prints the costliest ``TOP`` and each test folder's total."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: object) -> Generator[None, None, None]:
        before = cpu_seconds()
        yield
        self.spent[item.nodeid] = cpu_seconds() - before

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.spent:
            return
        folders: dict[str, float] = defaultdict(float)
        for nodeid, seconds in self.spent.items():
            folders[nodeid.split("::")[0].rsplit("/", 1)[0]] += seconds
        reporter = terminalreporter
        reporter.section(f"CPU seconds (this process and the processes it waited for): the costliest {TOP}")
        for nodeid, seconds in sorted(self.spent.items(), key=lambda kv: -kv[1])[:TOP]:
            reporter.write_line(f"{seconds:8.2f}s cpu  {nodeid}")
        reporter.write_line("  ".join(f"{folder}: {seconds:.0f} s" for folder, seconds in sorted(folders.items()))
                            + f"  (all: {sum(self.spent.values()):.0f} s)")
