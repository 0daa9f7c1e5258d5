"""Analysis by spec, read from the source (AST): the paper's tables and plots choose layouts from the spec, never by a
table's name, and the CPU studies stand beside the paper's analysis, both over the shared rooms.

    analysis/paper/   the paper's tables and figures (may import the shared rooms)
    analysis/study/   the CPU studies (may import the shared rooms, never analysis.paper)
    shared            analysis.loading, cells, specs, render, figures (import only each other)
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from analysis.paper.experiments import EXPERIMENTS, LAYOUTS, ExperimentSpec
from conftest import ROOT

# where the layouts are chosen: the renderers and the shims that keep `python -m analysis.tables|sweeps`
RENDERERS = ("analysis/paper/tables.py", "analysis/paper/sweeps.py", "analysis/tables.py", "analysis/sweeps.py")
SHARED = {"analysis.loading", "analysis.cells", "analysis.specs", "analysis.render", "analysis.figures"}


def name_uses(source: str, names: set[str]) -> list[str]:
    """Each string literal (f-strings' parts and docstrings too) holding a table's name as a word, and each
    comparison with ``spec.name``: ``line: what``."""
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(names))) + r")\b")
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and pattern.search(node.value):
            found.append(f"{node.lineno}: {node.value!r}")
        elif isinstance(node, ast.Compare) and any(
                isinstance(side, ast.Attribute) and side.attr == "name" and isinstance(side.value, ast.Name)
                and side.value.id == "spec" for side in [node.left, *node.comparators]):
            found.append(f"{node.lineno}: compares spec.name")
    return found


def test_the_name_check_finds_a_branch_on_a_table_name():
    source = 'def f(spec):\n    if spec.name == "table4":\n        return f"{x} table5"\n    return "fig3"\n'
    assert len(name_uses(source, {"table4", "table5", "fig3"})) == 4
    assert name_uses('"""Table 4 and Figure 3."""\nx = "tables"\n', {"table4", "fig3"}) == []


@pytest.mark.parametrize("path", RENDERERS)
def test_the_renderers_hold_no_table_name(path: str):
    found = name_uses((ROOT / path).read_text(), set(EXPERIMENTS))
    assert not found, f"{path} names a table (a layout fact belongs in its ExperimentSpec): {found}"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _analysis_imports(path: Path) -> set[str]:
    """The analysis modules a file imports (function-level imports too; ``from a import b`` counts as a and a.b)."""
    package = _module(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.update([module] + [f"{module}.{alias.name}" for alias in node.names])
    return {m for m in found if m == "analysis" or m.startswith("analysis.")}


def _allowed(module: str) -> bool:
    return module in SHARED or module == "analysis" or any(module.startswith(s + ".") for s in SHARED)


def test_the_study_imports_nothing_from_the_papers_analysis():
    wrong = {}
    for path in sorted((ROOT / "analysis" / "study").rglob("*.py")):
        bad = sorted(m for m in _analysis_imports(path) if not (m.startswith("analysis.study") or _allowed(m)))
        if bad:
            wrong[str(path.relative_to(ROOT))] = bad
    assert not wrong, f"analysis/study imports beyond itself and the shared rooms {sorted(SHARED)}: {wrong}"


def test_the_shared_rooms_import_neither_the_paper_nor_the_study():
    wrong = {}
    for module in sorted(SHARED):
        path = ROOT / (module.replace(".", "/") + ".py")
        bad = sorted(m for m in _analysis_imports(path) if not _allowed(m))
        if bad:
            wrong[module] = bad
    assert not wrong, wrong


def test_the_paper_imports_nothing_from_the_study():
    wrong = {str(p.relative_to(ROOT)): sorted(m for m in _analysis_imports(p) if m.startswith("analysis.study"))
             for p in sorted((ROOT / "analysis" / "paper").rglob("*.py"))}
    assert not {k: v for k, v in wrong.items() if v}


def test_every_layout_a_spec_may_name_has_a_renderer():
    from analysis.paper.tables import LAYOUTS as RENDERED
    assert set(RENDERED) == set(LAYOUTS)
    assert {spec.layout for spec in EXPERIMENTS.values() if spec.kind == "table"} <= set(LAYOUTS)


def test_a_spec_is_checked_when_it_is_made():
    grid = EXPERIMENTS["table1"].cpu
    with pytest.raises(ValueError, match="needs one of the layouts"):
        ExperimentSpec("t", "T", grid, grid)
    with pytest.raises(ValueError, match="no quantity"):
        ExperimentSpec("t", "T", grid, grid, layout="methods_by_task", extra=("nonsense",))
    with pytest.raises(ValueError, match="only a sweep"):
        ExperimentSpec("t", "T", grid, grid, layout="methods_by_task", plot="t")


def test_a_new_table_is_a_spec_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A spec the renderers have never seen is written in the layout it names, with its notes, by name."""
    from analysis.loading import Report
    from analysis.paper import coverage, tables
    base = EXPERIMENTS["table1"]
    spec = ExperimentSpec("table9", "Table 9: a new one", base.paper, base.cpu, layout="methods_by_task",
                          row_header="Setting", notes=("A note of its own.",))
    experiments = {**EXPERIMENTS, spec.name: spec}
    for module in (tables, coverage):
        monkeypatch.setattr(module, "EXPERIMENTS", experiments)
        monkeypatch.setattr(module, "TABLES", (spec.name,))
    written = tables.write_tables(ROOT / "tests" / "fixtures" / "records" / "cpu", tmp_path, paper_dir=None,
                                  report=Report(quiet=True))
    assert list(written) == ["table9"]
    text = (tmp_path / "table9.md").read_text()
    assert text.startswith("# Table 9: a new one") and "| Setting |" in text and "- A note of its own." in text
    assert "Mem." not in text                                     # costs not asked for, so not shown


def symbol_tables(source: str) -> list[int]:
    """Lines of dict literals that give a swept hyperparameter (``rho``, ``alpha``, ``lr_ratio``) its display
    symbol: each such dict owns the symbols."""
    from analysis.specs import SWEEP_SYMBOL
    return [node.lineno for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Dict) and any(
        isinstance(k, ast.Constant) and k.value in SWEEP_SYMBOL and isinstance(v, ast.Constant)
        and v.value == SWEEP_SYMBOL[k.value] for k, v in zip(node.keys, node.values))]


def test_the_symbol_scan_finds_a_second_table():
    assert symbol_tables('SYMBOLS = {"rho": "ρ", "alpha": "α"}\nKEYS = {"rho": ("method.rho",)}\n') == [1]


def test_one_sweep_symbol_table():
    owners = {str(p.relative_to(ROOT)) for p in sorted((ROOT / "analysis").rglob("*.py"))
              if symbol_tables(p.read_text())}
    assert owners == {"analysis/specs.py"}, f"the sweep symbols belong in analysis/specs.py SWEEP_SYMBOL: {owners}"
