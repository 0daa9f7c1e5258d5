"""The test tiers, read from the tests' source (AST only): the markers say what a test costs, and the fast tier
(``FAST=1 bash scripts/test.sh``: everything not marked ``slow`` or ``distributed``) still loads every module.

Markers (pyproject.toml): ``slow`` a test over ~2 s on the 2-core box, measured with ``--durations``, or a
parametrized family over ~10 s (end-to-end runs, sweeps, real models); ``subprocess`` a test that starts a
process (python, torchrun, a multiprocessing worker); ``sandbox`` a test that runs programs in the code sandbox,
or tests it; ``distributed`` several processes under torchrun. Only ``slow`` and ``distributed`` leave the fast
tier; the other two say why a test costs what it does (``-m "not subprocess"`` picks the in-process tests).
"""
from __future__ import annotations

import ast
import sys
from functools import lru_cache
from pathlib import Path

import pytest

from tests.tier_trace import LISTING, project_modules, read_listing

ROOT = Path(__file__).resolve().parents[3]
TEST_DIRS = ("tests/unit", "tests/integration", "tests/distributed")
FAST_EXCLUDES = {"slow", "distributed"}
SPAWN_CALLS = {("subprocess", name) for name in ("run", "Popen", "check_output", "check_call", "call")} | {
    ("os", "fork"), ("os", "posix_spawn"), ("mp", "Process"), ("mp", "get_context"), ("mp", "Pool"),
    ("multiprocessing", "Process"), ("multiprocessing", "get_context"), ("multiprocessing", "Pool")}
SANDBOX_CALLS = {"run_program", "run_programs", "run_checks", "humaneval_results", "humaneval_pass_at_1"}


@lru_cache(maxsize=None)
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _test_files() -> list[Path]:
    return sorted(p for folder in TEST_DIRS for p in (ROOT / folder).rglob("test_*.py"))


def _mark_names(decorators: list[ast.expr]) -> set[str]:
    """``slow`` from ``@pytest.mark.slow`` or ``@pytest.mark.slow(...)``."""
    names = set()
    for node in decorators:
        node = node.func if isinstance(node, ast.Call) else node
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "mark":
            names.add(node.attr)
    return names


def _module_marks(tree: ast.Module) -> set[str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets):
            value = node.value
            return _mark_names(list(value.elts) if isinstance(value, (ast.List, ast.Tuple)) else [value])
    return set()


def _tests(path: Path) -> dict[str, tuple[ast.FunctionDef, set[str]]]:
    """Every test function of a file (``Class.test_x`` for methods): its node and every mark it carries."""
    tree = _tree(path)
    found = {}
    for node in tree.body:
        inner = [(node.name + ".", n, _mark_names(node.decorator_list)) for n in node.body] if isinstance(
            node, ast.ClassDef) else [("", node, set())]
        for prefix, fn, class_marks in inner:
            if isinstance(fn, ast.FunctionDef) and fn.name.startswith("test_"):
                found[prefix + fn.name] = (fn, _mark_names(fn.decorator_list) | class_marks | _module_marks(tree))
    return found


def _calls(node: ast.AST) -> tuple[set[tuple[str, str]], set[str]]:
    """What ``node``'s body calls as ``module.attr`` and the bare names it mentions (helpers, fixtures)."""
    attrs, names = set(), set()
    for child in ast.walk(node):
        if isinstance(child, ast.Attribute) and isinstance(child.value, ast.Name):
            attrs.add((child.value.id, child.attr))
        elif isinstance(child, ast.Name):
            names.add(child.id)
        elif isinstance(child, ast.arg):
            names.add(child.arg)                 # a fixture is named as a parameter
    return attrs, names


def _does(path: Path, direct) -> dict[str, bool]:
    """Per module-level function (helpers, fixtures, tests): whether it, or a helper it names (also one imported
    from another test module), does what ``direct(attrs, names)`` detects."""
    tree = _tree(path)
    bodies = {n.name: _calls(n) for n in tree.body if isinstance(n, ast.FunctionDef)}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        bodies.update({f"{cls.name}.{n.name}": _calls(n) for n in cls.body if isinstance(n, ast.FunctionDef)})
    imported = _imported_helpers(tree, direct)
    verdict = {name: direct(*body) or bool(body[1] & imported) for name, body in bodies.items()}
    changed = True
    while changed:                                     # helpers calling helpers
        changed = False
        for name, (_, names) in bodies.items():
            if not verdict[name] and any(verdict.get(n) for n in names if n != name):
                verdict[name] = changed = True
    return verdict


def _imported_helpers(tree: ast.Module, direct) -> set[str]:
    """Names this file imports from another test module whose helper of that name does ``direct``."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.rpartition(".")[2].startswith("test_"):
            source = next((p for p in _test_files() if p.stem == node.module.rpartition(".")[2]), None)
            if source is not None:
                helpers = _does(source, direct)
                found |= {a.asname or a.name for a in node.names if helpers.get(a.name)}
    return found


def _spawns(attrs: set[tuple[str, str]], names: set[str]) -> bool:
    return bool(attrs & SPAWN_CALLS) or ("sys", "executable") in attrs


def _sandboxes(attrs: set[tuple[str, str]], names: set[str]) -> bool:
    return bool(names & SANDBOX_CALLS) or any(attr in SANDBOX_CALLS for _, attr in attrs)


def _unmarked(direct, marker: str) -> list[str]:
    missing = []
    for path in _test_files():
        verdict = _does(path, direct)
        for name, (_, marks) in _tests(path).items():
            if verdict.get(name) and marker not in marks:
                missing.append(f"{path.relative_to(ROOT)}::{name}")
    return missing


def test_a_test_that_starts_a_process_is_marked_subprocess():
    missing = _unmarked(_spawns, "subprocess")
    assert not missing, f"these start a process: mark them @pytest.mark.subprocess: {missing}"


def test_a_test_that_runs_programs_in_the_sandbox_is_marked_sandbox():
    missing = _unmarked(_sandboxes, "sandbox")
    assert not missing, f"these run programs in the sandbox: mark them @pytest.mark.sandbox: {missing}"


def test_the_scan_sees_spawns_through_helpers_and_marks_on_modules(tmp_path, monkeypatch):
    helper = tmp_path / "test_helper_spawns.py"
    helper.write_text("import subprocess, sys\ndef run_it():\n    return subprocess.run([sys.executable])\n")
    user = tmp_path / "test_user.py"
    user.write_text("import pytest\nfrom test_helper_spawns import run_it\npytestmark = [pytest.mark.slow]\n"
                    "def wrapper():\n    return run_it()\n@pytest.mark.subprocess\ndef test_a():\n    wrapper()\n"
                    "def test_b(tmp_path):\n    pass\n")
    monkeypatch.setattr(sys.modules[__name__], "_test_files", lambda: [helper, user])   # imports resolve by stem
    verdict, tests = _does(user, _spawns), _tests(user)
    assert verdict["test_a"] and verdict["wrapper"] and not verdict["test_b"]
    assert tests["test_a"][1] == {"slow", "subprocess"} and tests["test_b"][1] == {"slow"}


def _fast_tests(path: Path) -> list[str]:
    return [name for name, (_, marks) in _tests(path).items() if not marks & FAST_EXCLUDES]


def test_every_module_has_a_fast_test_file_that_loads_it():
    # tests/fast_tier.txt is written by a whole fast run (HIZFO_FAST_TRACE=tests/fast_tier.txt FAST=1 bash
    # scripts/test.sh, tests/tier_trace.py), which also fails when a module is loaded by no selected test
    listing = read_listing()
    wanted = project_modules()
    assert not wanted - set(listing), f"no fast test file listed for {sorted(wanted - set(listing))}"
    assert not set(listing) - wanted, f"listed but gone: {sorted(set(listing) - wanted)}"
    without = {m: f for m, f in listing.items() if not (ROOT / f).is_file() or not _fast_tests(ROOT / f)}
    assert not without, f"{LISTING.name} names files without a fast test: {without}"


def test_the_fast_tier_leaves_out_only_slow_and_distributed():
    text = (ROOT / "scripts" / "test.sh").read_text()
    assert 'not slow and not distributed' in text
    markers = (ROOT / "pyproject.toml").read_text()
    for marker in ("slow", "subprocess", "sandbox", "distributed"):
        assert f'"{marker}: ' in markers, marker


@pytest.mark.parametrize("folder", ["tests/integration", "tests/distributed"])
def test_integration_and_distributed_tests_are_all_outside_the_fast_tier(folder):
    fast = {f"{p.name}::{name}" for p in (ROOT / folder).rglob("test_*.py") for name in _fast_tests(p)}
    assert not fast, f"mark them slow (or distributed): {sorted(fast)}"


def test_the_trace_credits_the_test_that_loads_a_module_and_fails_on_a_module_none_loads(tmp_path, monkeypatch):
    import types
    from tests.tier_trace import ModuleTrace
    trace = ModuleTrace(tmp_path / "map.txt")
    trace.modules = {"tier_probe_a", "tier_probe_b"}
    item = types.SimpleNamespace(path=ROOT / "tests" / "unit" / "project" / "test_tiers.py")
    run = trace.pytest_runtest_protocol(item)
    next(run)
    monkeypatch.setitem(sys.modules, "tier_probe_a", types.ModuleType("tier_probe_a"))    # the test loads it
    with pytest.raises(StopIteration):
        next(run)
    session = types.SimpleNamespace(items=[item], exitstatus=0)
    trace.pytest_sessionfinish(session)
    assert session.exitstatus == pytest.ExitCode.TESTS_FAILED and "['tier_probe_b']" in trace.verdict
    assert read_listing(tmp_path / "map.txt") == {"tier_probe_a": "tests/unit/project/test_tiers.py"}
