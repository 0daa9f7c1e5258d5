"""The house's structure, read from the source (AST only, nothing imported): the layers, the sizes of the rooms.

Layers, lowest first. A module may import from its own layer and any lower one, never from a higher one:

    base       hizfo/*.py: errors, config schemas, hub probe, lock-file tool (ROOT_MODULES says why each)
    eval       hizfo/eval: scoring generated text: metrics, stop rules, the code sandbox
    tasks      hizfo/tasks: datasets, prompts, references
    core       hizfo/core: the paper's algorithm and what it runs on: precision, device, models, the Method
               protocol, ZO kernels, cost model, profiling, selection, partition, the hybrid step
    run        hizfo/run: one run's infrastructure: spec, records, checkpoints, signals, locks, meters,
               tracking, validation, the loop
    baselines  baselines/: the comparison methods (plugins over core)
    apps       run.py, analysis/, benchmarks/, scripts/

Every import counts, also those inside functions or under ``TYPE_CHECKING``: a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("hizfo", "baselines", "analysis", "benchmarks", "scripts")

# module-name prefix -> layer; the longest matching prefix wins. A package is one layer.
LAYER_OF_PREFIX: dict[str, str] = {
    "hizfo": "base",                # hizfo/*.py at the root: errors, config, hub_probe, lockfile
    "hizfo.eval": "eval",
    "hizfo.tasks": "tasks",
    "hizfo.core": "core",
    "hizfo.run": "run",
    "baselines": "baselines",
    "run": "apps", "analysis": "apps", "benchmarks": "apps", "scripts": "apps",
    "hizfo.plan": "apps",           # ``python -m hizfo.plan``: an entry point, as run.py is
}
# the modules that stay at hizfo's root, and why (a new one needs a reason too)
ROOT_MODULES: dict[str, str] = {
    "hizfo.errors": "the error types every layer raises",
    "hizfo.config": "the structured-config schemas every layer reads",
    "hizfo.registry": "every method's config schema and the one table of methods; torch-free, so analysis reads "
                      "defaults without torch",
    "hizfo.hub_probe": "stdlib-only: is the Hub reachable; read by models (core) and tasks",
    "hizfo.plan": "the planner's short entry point, ``python -m hizfo.plan`` (an app: it only calls "
                  "hizfo.run.plan.main)",
    "hizfo.lockfile": "stdlib-only, run by path by scripts/setup.sh and scripts/update_lock.sh before anything "
                      "is installed",
}
LAYERS = ("base", "eval", "tasks", "core", "run", "baselines", "apps")

# Known upward imports: the baseline this check started from, to shrink to nothing (importer, imported): why
UPWARD_BASELINE: dict[tuple[str, str], str] = {}

MAX_LINES = 450
# non-test files over MAX_LINES lines: path -> why it is still one file
LONG_FILES: dict[str, str] = {
    "benchmarks/gpu_check.py": "baseline: one self-contained GPU acceptance script, run by path on the GPU node",
}
# test files over MAX_LINES lines: path -> why it is still one file (the list may only shrink)
LONG_TEST_FILES: dict[str, str] = {}
MAX_FUNCTION_LINES = 60
# non-test functions over MAX_FUNCTION_LINES lines ("path:Qualified.name"): why each is still one function.
# The list may only shrink: a function that got short (or went) must leave it.
LONG_FUNCTIONS: dict[str, str] = {}


def _modules() -> dict[str, Path]:
    """Every importable module of the scanned packages, plus run.py, by dotted name."""
    found = {"run": ROOT / "run.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


@lru_cache(maxsize=None)
def _tree(path: Path) -> ast.Module:
    """One parse per file for every scan of this module (the scans ran ~2 s each when each parsed anew)."""
    return ast.parse(path.read_text(), filename=str(path))


def _imports(name: str, path: Path) -> set[str]:
    """The scanned modules that ``name`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:      # `import a.b.c` depends on the deepest scanned module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def layer_of(module: str) -> str:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in LAYER_OF_PREFIX:
            return LAYER_OF_PREFIX[prefix]
    raise KeyError(module)


def test_every_module_has_a_layer():
    unplaced = []
    for module in MODULES:
        try:
            layer_of(module)
        except KeyError:
            unplaced.append(module)
    assert not unplaced, f"add these modules to LAYER_OF_PREFIX: {unplaced}"


def test_hizfo_root_holds_only_the_named_modules():
    root = {m for m in MODULES if m.startswith("hizfo.") and m.count(".") == 1 and not MODULES[m].name == "__init__.py"}
    assert root == set(ROOT_MODULES), f"hizfo/ root modules: {sorted(root)}; put a module in its layer's package"


def test_no_upward_import_across_layers():
    upward = {(a, b) for a, targets in GRAPH.items() for b in targets
              if LAYERS.index(layer_of(b)) > LAYERS.index(layer_of(a))}
    new = sorted(upward - set(UPWARD_BASELINE))
    assert not new, "imports upward across the layers " + ", ".join(
        f"{a} ({layer_of(a)}) -> {b} ({layer_of(b)})" for a, b in new)
    gone = sorted(set(UPWARD_BASELINE) - upward)
    assert not gone, f"fixed: remove {gone} from UPWARD_BASELINE"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    # a package's __init__ importing its own modules is how packages re-export, not a cycle between rooms
    graph = {a: {b for b in targets if not (MODULES[a].name == "__init__.py" and b.startswith(a + "."))}
             for a, targets in GRAPH.items()}
    assert _cycles(graph) == []


def _line_count(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_no_file_over_the_limit_except_the_named_ones():
    sources = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")] + [ROOT / "run.py"]
    long = {str(p.relative_to(ROOT)): _line_count(p) for p in sources if _line_count(p) > MAX_LINES}
    unnamed = {p: n for p, n in long.items() if p not in LONG_FILES}
    assert not unnamed, f"over {MAX_LINES} lines: split them, or name them with the reason in LONG_FILES: {unnamed}"
    shrunk = sorted(set(LONG_FILES) - set(long))
    assert not shrunk, f"now within {MAX_LINES} lines (or gone): remove {shrunk} from LONG_FILES"


def test_no_test_file_over_the_limit_except_the_named_ones():
    tests = list((ROOT / "tests").rglob("*.py"))
    long = {str(p.relative_to(ROOT)): _line_count(p) for p in tests if _line_count(p) > MAX_LINES}
    unnamed = {p: n for p, n in long.items() if p not in LONG_TEST_FILES}
    assert not unnamed, f"over {MAX_LINES} lines: split them, or name them with why in LONG_TEST_FILES: {unnamed}"
    shrunk = sorted(set(LONG_TEST_FILES) - set(long))
    assert not shrunk, f"now within {MAX_LINES} lines (or gone): remove {shrunk} from LONG_TEST_FILES"


def _function_lengths(path: Path) -> dict[str, int]:
    """Every function and method of one file, by qualified name (``Class.method``, ``outer.inner``): its lines."""
    lengths: dict[str, int] = {}

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lengths[prefix + child.name] = child.end_lineno - child.lineno + 1
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
    walk(_tree(path), "")
    return lengths


def _all_function_lengths() -> dict[str, int]:
    sources = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")] + [ROOT / "run.py"]
    return {f"{p.relative_to(ROOT)}:{name}": n for p in sorted(sources) for name, n in _function_lengths(p).items()}


def test_function_lengths_see_methods_and_nested_functions():
    lengths = _function_lengths(ROOT / "hizfo" / "run" / "loop.py")
    assert "Training._step" in lengths and "train_and_evaluate" in lengths


def test_no_function_over_the_limit_except_the_named_ones():
    long = {name: n for name, n in _all_function_lengths().items() if n > MAX_FUNCTION_LINES}
    unnamed = {name: n for name, n in long.items() if name not in LONG_FUNCTIONS}
    assert not unnamed, (f"functions over {MAX_FUNCTION_LINES} lines: split them into named steps, or name them "
                         f"with the reason in LONG_FUNCTIONS: {unnamed}")
    shrunk = sorted(set(LONG_FUNCTIONS) - set(long))
    assert not shrunk, f"now within {MAX_FUNCTION_LINES} lines (or gone): remove {shrunk} from LONG_FUNCTIONS"


def test_the_entry_point_is_short():
    """run.py is an entry point, not a library: its two functions, 54 lines in all when this was last tightened."""
    lengths = _function_lengths(ROOT / "run.py")
    assert set(lengths) == {"inputs_from_hydra", "main"}, lengths
    assert _line_count(ROOT / "run.py") <= 55 and max(lengths.values()) <= 10, lengths


def _python_files() -> list[Path]:
    return sorted(p for folder in (*PACKAGES, "tests") for p in (ROOT / folder).rglob("*.py")) + [ROOT / "run.py"]


def _files_naming(names: set[str]) -> dict[str, set[str]]:
    """The Python files whose code (not comments or strings) uses any of ``names``, as a name or an attribute."""
    found: dict[str, set[str]] = {}
    for path in _python_files():
        for node in ast.walk(_tree(path)):
            used = (node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute)
                    else None)
            names_imported = ({a.name.rpartition(".")[2] for a in node.names}
                              if isinstance(node, (ast.Import, ast.ImportFrom)) else set())
            for name in names & ({used} | names_imported):
                found.setdefault(str(path.relative_to(ROOT)), set()).add(name)
    return found


def test_no_sys_path_edits():
    # run.py, benchmarks/ and scripts/ import from the repository root: pytest's `pythonpath`, `python -m`, or
    # the editable install (pyproject.toml), never a sys.path edit
    offenders = [str(p.relative_to(ROOT)) for p in _python_files()
                 if any(isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
                        and node.value.id == "sys" for node in ast.walk(_tree(p)))]
    assert offenders == [], f"sys.path edited in {offenders}"


def test_only_the_entry_point_reads_hydras_global_state():
    # every other caller passes what Hydra would add as hizfo.run.session.RunInputs
    assert set(_files_naming({"HydraConfig"})) == {"run.py"}


def test_one_composer():
    # hizfo.run.session.compose is the one place a config is composed outside run.py's @hydra.main
    # (and the test that stands in for run.py's @hydra.main, composing a cell inside an initialised Hydra)
    assert set(_files_naming({"initialize_config_dir", "initialize"})) == {"hizfo/run/session.py",
                                                                          "tests/unit/run/test_slurm_preflight.py"}
    # and the one caller of Hydra's compose (inside run.py's @hydra.main too: a launcher's callback asks it)
    callers = {str(path.relative_to(ROOT)) for path in _python_files() for node in ast.walk(_tree(path))
               if isinstance(node, ast.ImportFrom) and node.module == "hydra"
               and "compose" in {a.name for a in node.names}}
    assert callers == {"hizfo/run/session.py"}, callers


def test_the_scan_sees_imports():
    # the scan must see module-level and lazy imports, or every check above would pass on an empty graph
    assert GRAPH["run"] >= {"hizfo.registry", "hizfo.run.entry_interrupts", "hizfo.run.session"}
    assert "hizfo.run.loop" in GRAPH["hizfo.run.session"]
    assert "hizfo.errors" in GRAPH["hizfo.tasks.base"]
    assert "hizfo.core.zo" in GRAPH["hizfo.core.hybrid"]
    assert "hizfo.registry" in GRAPH["baselines.lora"]


# analysis reads records and the method registry; neither may pull in the training stack
TORCH_FREE = sorted(m for m in MODULES if m == "analysis" or m.startswith("analysis.")) + [
    "hizfo.registry", "hizfo.run.records", "hizfo.run.runspec", "hizfo.tasks", "hizfo.tasks.catalogue"]


@pytest.mark.subprocess
def test_the_torch_free_modules_together_load_without_torch_transformers_or_peft():
    # one interpreter for all (~2.5 s): any of them pulling torch in shows here; the slow check below names which
    import subprocess
    import sys
    code = (f"import importlib, sys; [importlib.import_module(m) for m in {TORCH_FREE!r}]; "
            "print(sorted(m for m in ('torch', 'peft', 'transformers', 'baselines') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", (out.stdout, out.stderr)


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.parametrize("module", TORCH_FREE)
def test_analysis_and_the_record_schema_load_without_torch_transformers_or_peft(module):
    import subprocess
    import sys
    code = (f"import sys, {module}; "
            "print(sorted(m for m in ('torch', 'peft', 'transformers', 'baselines') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", (out.stdout, out.stderr)


def test_the_torch_free_list_covers_every_analysis_module():
    assert {"analysis.loading", "analysis.study", "analysis.study.driver", "analysis.tables", "analysis.sweeps",
            "analysis.paper.tables", "analysis.paper.sweeps", "analysis.compare"} <= set(TORCH_FREE)


def test_every_method_yaml_is_in_the_registry_and_names_its_implementation():
    from hizfo.registry import METHODS, implementation
    # conf/method holds the methods and their controls (hizfo_zo_off: hizfo.yaml with other values)
    def schema_of(stem: str) -> str:
        text = (ROOT / "conf" / "method" / f"{stem}.yaml").read_text()
        composed = [line.strip()[2:] for line in text.splitlines() if line.startswith("  - ")]
        schema = [c.split(": ")[1] for c in composed if c.startswith("/schema/method@_here_: ")]
        return schema[0] if schema else schema_of(next(c for c in composed if c != "_self_"))
    for yaml in sorted((ROOT / "conf" / "method").glob("*.yaml")):
        assert schema_of(yaml.stem) in METHODS, yaml.name
    assert implementation("lora").__name__ == "LoRA" and implementation("hizfo").__name__ == "HiZFO"


def test_the_repository_points_nowhere_outside_itself():
    # a reader of the repository can open neither another checkout's notes nor an issue tracker's numbers
    import re
    pattern = re.compile(r"\bissue[ _]?#?\d+\b|\.\./shared\b|" + "IMPLEMENTATION" + "_NOTES", re.IGNORECASE)
    sources = [ROOT / "README.md", ROOT / "run.py"]
    for folder in ("hizfo", "baselines", "analysis", "benchmarks", "conf", "docs", "scripts", "tests", "experiments"):
        sources += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".yaml", ".sh", ".txt")
                    and "fixtures" not in p.parts]
    found = [f"{p.relative_to(ROOT)}:{n}" for p in sources for n, line in enumerate(p.read_text().splitlines(), 1)
             if pattern.search(line)]
    assert not found, found


# tests/unit mirrors the layers: a folder per layer, and project/ for the checks of the whole tree
UNIT_FOLDERS = {*LAYERS, "project"}


def test_unit_tests_are_mirrored_by_layer():
    unit = ROOT / "tests" / "unit"
    assert not list(unit.glob("test_*.py")), "a unit test file outside a layer folder (tests/unit/<layer>/)"
    assert {p.parent.name for p in unit.rglob("test_*.py")} <= UNIT_FOLDERS
    assert {p.name for p in unit.iterdir() if p.is_dir() and p.name != "__pycache__"} <= UNIT_FOLDERS
