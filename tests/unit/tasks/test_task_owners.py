"""One owner per task fact, each composed into the task's yaml instead of restated there:

* a hub task's sources live in its class (``sources``; ``- /task_hub@options.hub: <task>``, hizfo.registry
  hub_sources), and no yaml or other module writes a hub dataset id as a value;
* the evaluation protocols are typed and listed once (hizfo/config.py ``TASK_PROTOCOLS``; ``- /task_protocols@
  options.protocols: <task>``), checked and resolved by ``resolve_protocol`` alone; analysis reads no conf/.
"""
from __future__ import annotations

import ast
import re
import importlib
from pathlib import Path
from typing import Any, Iterator

import pytest
from omegaconf import OmegaConf

from hizfo.registry import HUB_ENTRY
from tests.conftest import ROOT, compose

TASK_MODULES = sorted(p.stem for p in (ROOT / "hizfo" / "tasks").glob("*.py") if p.stem != "__init__")
PYTHON = ("hizfo", "baselines", "analysis", "benchmarks", "scripts")


def hub_classes() -> dict[str, type]:
    """Task module -> the class in it that declares ``sources`` itself."""
    found = {}
    for module in TASK_MODULES:
        loaded = importlib.import_module(f"hizfo.tasks.{module}")
        for value in vars(loaded).values():
            if isinstance(value, type) and value.__module__ == loaded.__name__ and vars(value).get("sources"):
                found[module] = value
    return found


HUB_CLASSES = hub_classes()
DATASETS = {s.dataset for cls in HUB_CLASSES.values() for s in cls.sources.values()}


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def test_the_six_hub_tasks_are_found():
    assert sorted(HUB_CLASSES) == ["dialogsum", "gsm8k", "humaneval", "math500", "scitldr", "webquestions"]
    assert "google-research-datasets/mbpp" in DATASETS


@pytest.mark.parametrize("task", sorted(HUB_CLASSES))
def test_a_hub_tasks_yaml_composes_its_classs_sources(task: str):
    raw = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "task" / f"{task}.yaml"), resolve=False)
    assert {HUB_ENTRY: task} in raw["defaults"], f"conf/task/{task}.yaml: add `- {HUB_ENTRY}: {task}`"
    assert "hub" not in (raw.get("options") or {}), f"conf/task/{task}.yaml restates the class's hub sources"
    assert raw["_target_"] == f"{HUB_CLASSES[task].__module__}.{HUB_CLASSES[task].__name__}"
    composed = OmegaConf.to_container(compose([f"task={task}"]).task.options.hub)
    assert composed == HUB_CLASSES[task].hub_config()


def test_an_override_still_moves_one_key():
    hub = compose(["task=gsm8k", "task.options.hub.eval.split=train"]).task.options.hub
    assert OmegaConf.to_container(hub) == {"train": {"dataset": "openai/gsm8k", "config": "main", "split": "train"},
                                           "eval": {"dataset": "openai/gsm8k", "config": "main", "split": "train"}}


def test_only_hub_tasks_compose_hub_sources():
    for path in sorted((ROOT / "conf" / "task").glob("*.yaml")):
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        if any(HUB_ENTRY in entry for entry in raw.get("defaults", []) if isinstance(entry, dict)):
            assert path.stem in HUB_CLASSES, f"{path.name} composes hub sources its class does not declare"


def test_no_yaml_writes_a_hub_dataset_as_a_value():
    # comments may name a dataset; a value would be a second owner (or an override the class cannot see)
    found = [str(path.relative_to(ROOT)) for path in sorted((ROOT / "conf").rglob("*.yaml"))
             if DATASETS & set(_strings(OmegaConf.to_container(OmegaConf.load(path), resolve=False)))]
    assert not found, found


def test_no_module_but_its_class_writes_a_hub_dataset():
    owners: dict[str, set[str]] = {}
    for package in PYTHON:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                          if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                          and isinstance(node.body[0], ast.Expr)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and node.value in DATASETS and id(node) not in docstrings:
                    owners.setdefault(node.value, set()).add(str(path.relative_to(ROOT)))
    expected = {s.dataset: {f"hizfo/tasks/{task}.py"} for task, cls in HUB_CLASSES.items() for s in cls.sources.values()}
    assert owners == expected


# -- evaluation protocols: typed in hizfo/config.py (TASK_PROTOCOLS), checked and resolved by resolve_protocol ----

PROTOCOL_ENTRY = "/task_protocols@options.protocols"


@pytest.mark.parametrize("task", sorted(p.stem for p in (ROOT / "conf" / "task").glob("*.yaml")))
def test_a_tasks_protocols_are_composed_from_the_one_table(task: str):
    from hizfo.config import TASK_PROTOCOLS
    raw = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "task" / f"{task}.yaml"), resolve=False)
    assert "protocols" not in (raw.get("options") or {}), f"conf/task/{task}.yaml restates its protocols"
    assert ({PROTOCOL_ENTRY: task} in raw["defaults"]) == (task in TASK_PROTOCOLS)
    if task in TASK_PROTOCOLS:
        composed = OmegaConf.to_container(compose([f"task={task}"]).task.options.protocols)
        assert composed == {name: c.as_config() for name, c in TASK_PROTOCOLS[task].items()}


@pytest.mark.parametrize("override,message", [
    ("task.protocol=squad", "task.protocol: 'squad' is not one of greentrainer, normalized"),
    ("task.options.protocols.greentrainer.answer_match=fuzzy",
     "task.options.protocols.greentrainer.answer_match: 'fuzzy' is not one of exact, squad"),
    ("task.options.protocols.normalized.max_new_tokens=0",
     "task.options.protocols.normalized.max_new_tokens: must be a whole number >= 1, got 0"),
    ("+task.options.protocols.normalized.beams=2", "task.options.protocols.normalized.beams: not a protocol setting"),
])
def test_a_bad_protocol_is_one_line_before_anything_resolves(override: str, message: str):
    from hizfo.errors import ConfigError
    from hizfo.run.validation import validate_run_config
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_run_config(compose(["task=webquestions", override]))


def test_the_task_holds_its_typed_protocol():
    from hizfo.config import ProtocolConfig
    from hydra.utils import instantiate
    task = instantiate(compose(["task=webquestions", "task.protocol=normalized"]).task, _convert_="all")
    assert task.protocol == ProtocolConfig(32, ("</s>", "\n"), answer_match="squad")
    assert instantiate(compose(["task=toy"]).task, _convert_="all").protocol is None


def protocol_reads(source: str) -> list[int]:
    """Lines that read ``protocols`` off a task's options (``options.get("protocols")``, ``options["protocols"]``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == "protocols":
            receiver = node.func.value
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value == "protocols":
            receiver = node.value
        else:
            continue
        if "options" in ast.unparse(receiver):
            found.append(node.lineno)
    return found


def conf_reads(source: str) -> list[int]:
    """Lines of string literals that name the conf/ folder as a path (``ROOT / "conf" / "task"``)."""
    return [node.lineno for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and (node.value == "conf" or node.value.startswith("conf/"))]


def test_the_scans_find_a_second_reader():
    old = 'CONF = ROOT / "conf" / "task"\nnames = tuple(OmegaConf.load(CONF).options.get("protocols") or ())\n'
    assert protocol_reads(old) == [2] and conf_reads(old) == [1]
    assert protocol_reads('row.get("protocols")\n') == [] and conf_reads('"""see conf/task"""\n') == []


def test_protocols_are_read_in_one_place_and_analysis_reads_no_conf():
    readers = {str(p.relative_to(ROOT)) for package in PYTHON for p in sorted((ROOT / package).rglob("*.py"))
               if protocol_reads(p.read_text())}
    assert readers == {"hizfo/config.py"}, readers
    analysis = {str(p.relative_to(ROOT)) for p in sorted((ROOT / "analysis").rglob("*.py")) if conf_reads(p.read_text())}
    assert not analysis, f"analysis reads conf/ (read the owner module instead): {analysis}"
