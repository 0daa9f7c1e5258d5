"""docs/contributing.md's recipes, checked where a file can be looked for: every method, control and task has the
files the recipe names (the test names the missing one)."""
from __future__ import annotations

import pytest

from tests.conftest import ROOT

METHOD_YAMLS = sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml"))
TASK_YAMLS = sorted(p.stem for p in (ROOT / "conf" / "task").glob("*.yaml"))


def test_the_recipes_cover_the_registry():
    from hizfo.registry import METHODS
    assert set(METHODS) <= set(METHOD_YAMLS), "every registered method has conf/method/<name>.yaml"
    assert len(METHOD_YAMLS) >= len(METHODS) and len(TASK_YAMLS) >= 5


@pytest.mark.parametrize("name", METHOD_YAMLS)
def test_every_method_and_control_has_its_files(name):
    from analysis.specs import METHOD_DISPLAY
    assert (ROOT / "conf" / "tuning" / f"toy_{name}.yaml").is_file(), f"conf/tuning/toy_{name}.yaml"
    assert name in METHOD_DISPLAY, f"analysis/specs.py METHOD_DISPLAY['{name}']"


@pytest.mark.parametrize("name", TASK_YAMLS)
def test_every_task_has_its_files(name):
    from hizfo.tasks.catalogue import TASKS
    assert (ROOT / "hizfo" / "tasks" / f"{name}.py").is_file(), f"hizfo/tasks/{name}.py"
    assert name in TASKS, f"hizfo/tasks/catalogue.py TASKS['{name}']"
    text = (ROOT / "docs" / "tasks.md").read_text()
    assert names_task(text, name), f"docs/tasks.md names `{name}` (or `task={name}`)"


def names_task(text: str, name: str) -> bool:
    """Whether ``text`` names task ``name`` as code: `` `name` `` (the table's rows) or `` `task=name` ``
    (headings, option tables), never as a mere substring (``toy`` inside a word, ``humaneval`` inside
    ``humaneval_split``)."""
    import re
    return re.search(rf"`(?:task=)?{re.escape(name)}`", text) is not None


def test_a_task_is_named_as_code_not_as_a_substring():
    assert names_task("| `scitldr` | allenai/scitldr |", "scitldr")
    assert names_task("## `task=pydoc`: code summarisation", "pydoc")
    assert not names_task("a toy example; `toy_extra`; task=toy", "toy")
    assert not names_task("## `task=humaneval_split`: two halves", "humaneval")


def test_the_guide_names_files_that_exist():
    import re
    text = (ROOT / "docs" / "contributing.md").read_text()
    named = set(re.findall(r"`((?:hizfo|baselines|analysis|scripts|tests|conf|docs)/[A-Za-z0-9_./]+\.(?:py|md|yaml))`",
                           text))
    missing = sorted(p for p in named if "<" not in p and not (ROOT / p).exists())
    assert named and not missing, missing


def test_the_guide_runs_both_arm_generators_as_modules():
    # one way for the two study-arm generators (`python -m`, as the scripts import analysis/ from the root)
    import re
    text = (ROOT / "docs" / "contributing.md").read_text()
    assert not re.search(r"python scripts/gen_study\w*\.py", text)
    modules = re.findall(r"`python -m scripts\.(gen_study\w+)`", text)
    assert sorted(modules) == ["gen_study1_arms", "gen_study2_arms"], modules
    assert all((ROOT / "scripts" / f"{m}.py").is_file() for m in modules)
