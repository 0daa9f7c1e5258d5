"""One owner per task fact: a hub task's sources live in its class (``sources``), and its yaml composes them
(``- /task_hub@options.hub: <task>``, hizfo.registry.hub_sources) instead of restating them; no yaml or other
module writes a hub dataset id as a value."""
from __future__ import annotations

import ast
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
