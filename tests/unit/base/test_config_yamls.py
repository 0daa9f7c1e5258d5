"""Each yaml of conf/model, conf/task and conf/method sets only what differs from its schema (hizfo/config.py,
hizfo/registry.py): a key that restates a schema default is a second owner of that default.

conf/study_task, conf/study_arm and conf/tuning are not checked here: they sit over a composed config (a task's
yaml, a preset), so a value equal to the schema's default may be the point (greedy decoding over a beam-4 task).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[3]
GROUPS = ("model", "task", "method")
TASK_PARTS = ("/task_hub@options.hub", "/task_protocols@options.protocols")   # hizfo.registry.register_schemas
# a deliberate restatement: (yaml path under conf/, dotted key) -> why it stays (none today)
ALLOWED: dict[tuple[str, str], str] = {}


def schema_of(group: str, name: str) -> Any:
    """The structured config of ``/schema/<group>@_here_: <name>`` (hizfo.registry.register_schemas)."""
    from hizfo.config import ModelConfig, TaskConfig
    from hizfo.registry import METHODS
    schema = {"model": ModelConfig, "task": TaskConfig}.get(group) or METHODS[name]
    return OmegaConf.structured(schema)


def _load(path: Path) -> tuple[list[Any], dict[str, Any]]:
    """A yaml's defaults list and its own keys, interpolations unresolved."""
    own = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return own.pop("defaults", []), own


@lru_cache(maxsize=None)
def baseline(path: Path) -> Any:
    """What a yaml's own keys are merged onto: its schema, or the composed sibling it extends (``- hizfo``)."""
    group = path.parent.name
    base = None
    for entry in _load(path)[0]:
        if entry == "_self_":
            continue
        if isinstance(entry, dict) and list(entry) == [f"/schema/{group}@_here_"]:
            base = schema_of(group, entry[f"/schema/{group}@_here_"])
        elif group == "task" and isinstance(entry, dict) and list(entry)[0] in TASK_PARTS:
            continue                  # hub sources and protocols composed from their owners, not schema defaults
        elif isinstance(entry, str):
            base = composed(path.parent / f"{entry}.yaml")
        else:
            raise AssertionError(f"{path}: a defaults entry this check does not know: {entry!r}")
    assert base is not None, f"{path}: composes no schema"
    return base


def composed(path: Path) -> Any:
    return OmegaConf.merge(baseline(path), _load(path)[1])


def _same(value: Any, default: Any) -> bool:
    if isinstance(value, bool) or isinstance(default, bool):
        return value is default
    return value == default


def _restated(own: dict[str, Any], base: dict[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key, value in own.items():
        default = base.get(key, "<absent>")
        if isinstance(value, dict) and isinstance(default, dict) and default:
            found += _restated(value, default, f"{prefix}{key}.")
        elif _same(value, default):
            found.append(f"{prefix}{key}")
    return found


def restated_keys(path: Path) -> list[str]:
    """The dotted keys ``path`` sets to the value it would compose to without them."""
    base = OmegaConf.to_container(baseline(path), resolve=False)
    return _restated(_load(path)[1], base)


YAMLS = sorted(p for group in GROUPS for p in (ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("path", YAMLS, ids=[str(p.relative_to(ROOT / "conf")) for p in YAMLS])
def test_a_group_yaml_sets_only_what_differs_from_its_schema(path: Path) -> None:
    name = str(path.relative_to(ROOT / "conf"))
    found = [key for key in restated_keys(path) if (name, key) not in ALLOWED]
    assert not found, f"conf/{name}: {', '.join(found)} restate(s) the schema's default: remove the key"


def test_every_allowed_restatement_is_still_one() -> None:
    stale = [f"{name}: {key}" for name, key in ALLOWED if key not in restated_keys(ROOT / "conf" / name)]
    assert not stale, f"no longer restated, drop from ALLOWED: {stale}"


def test_the_check_finds_a_restated_key(tmp_path: Path) -> None:
    group = tmp_path / "task"
    group.mkdir()
    (group / "t.yaml").write_text("defaults:\n  - /schema/task@_here_: task\n  - _self_\n_target_: x.T\nname: t\n"
                                  "batch_size: 4\neval_batch_size: 16\ngeneration:\n  num_beams: 1\n  stop: ['\\n']\n"
                                  "options: {n: 1}\n")
    (group / "u.yaml").write_text("defaults:\n  - t\n  - _self_\nname: u\neval_batch_size: 16\nlimit: 3\n")
    assert restated_keys(group / "t.yaml") == ["batch_size", "generation.num_beams"]
    assert restated_keys(group / "u.yaml") == ["eval_batch_size"]          # restates its sibling's value
    methods = tmp_path / "method"
    methods.mkdir()
    (methods / "m.yaml").write_text("defaults:\n  - /schema/method@_here_: mezo\n  - _self_\nschedule: constant\n"
                                    "lr: 2.0e-5\n")
    assert restated_keys(methods / "m.yaml") == ["schedule"]                # mezo's own default, not MethodConfig's
