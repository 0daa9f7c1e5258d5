"""Which project modules the tests of one pytest session import: the fast tier's coverage of modules.

Registered by tests/conftest.py when ``HIZFO_FAST_TRACE`` names a file (scripts/test.sh sets it for a whole
``FAST=1`` run). A module counts for a test file when importing that file, or running one of its selected tests
(fixtures included), first loads it in this process; code run in a subprocess counts for nothing. At the end the
session fails if a module of ``PACKAGES`` was loaded by no selected test, and the map (module, one test file that
loaded it) is written to the named file; ``tests/fast_tier.txt`` is that map, checked by tests/unit/project/test_tiers.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("hizfo", "baselines", "analysis", "scripts")
LISTING = ROOT / "tests" / "fast_tier.txt"
HEADER = ("# module  a fast test file that loads it (in its import or one of its fast tests), as a whole fast run\n"
          "# found it: HIZFO_FAST_TRACE=tests/fast_tier.txt FAST=1 bash scripts/test.sh rewrites this file\n")


def project_modules() -> set[str]:
    """Every importable module of ``PACKAGES``, plus run.py, by dotted name (``__main__`` shims left out: each
    is two lines calling a ``main`` that its package's tests run)."""
    found = {"run"}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] != "__main__":
                found.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def read_listing(path: Path = LISTING) -> dict[str, str]:
    """``module  tests/...py`` lines (``#`` starts a comment) as {module: test file}."""
    pairs = (line.split("#")[0].split() for line in path.read_text().splitlines())
    return {pair[0]: pair[1] for pair in pairs if len(pair) == 2}


class ModuleTrace:
    """pytest hooks recording, per test file, the project modules it first loaded."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.modules = project_modules()
        self.loaded_by: dict[str, str] = {}          # module -> the test file that first loaded it
        self.at_collection: dict[str, set[str]] = {}  # test file -> modules its import loaded
        self.verdict = ""

    def _new(self, before: set[str]) -> set[str]:
        return (set(sys.modules) - before) & self.modules

    @pytest.hookimpl(hookwrapper=True)
    def pytest_make_collect_report(self, collector):
        before = set(sys.modules)
        yield
        if isinstance(collector, pytest.Module):
            self.at_collection[str(Path(collector.path).relative_to(ROOT))] = self._new(before)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item):
        before = set(sys.modules)
        yield
        for module in self._new(before):
            self.loaded_by.setdefault(module, str(Path(item.path).relative_to(ROOT)))

    def pytest_sessionfinish(self, session) -> None:
        selected = {str(Path(item.path).relative_to(ROOT)) for item in session.items}
        for test_file in sorted(selected):                     # a module-level import serves that file's tests
            for module in self.at_collection.get(test_file, ()):
                self.loaded_by.setdefault(module, test_file)
        missing = sorted(self.modules - set(self.loaded_by))
        self.out.write_text(HEADER + "".join(f"{m}  {f}\n" for m, f in sorted(self.loaded_by.items())))
        if missing:
            self.verdict = f"fast tier: no selected test loads {missing}: give each a fast test"
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        else:
            self.verdict = f"fast tier: every one of {len(self.modules)} modules loaded; map in {self.out}"

    def pytest_terminal_summary(self, terminalreporter) -> None:
        terminalreporter.write_line(self.verdict, red=self.verdict.startswith("fast tier: no "))
