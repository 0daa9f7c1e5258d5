"""The task catalogue (hizfo/tasks/catalogue.py) is the one owner of each task's score keys, header and decimals:
every task's ``score()`` returns exactly its entry's keys, every configured task has an entry, analysis refuses a
task without one, and no other module maps a task to its metric keys."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hydra.utils import instantiate

from hizfo.errors import ConfigError
from hizfo.tasks.catalogue import TASKS, entry, metric_decimals, score_of
from tests.conftest import ROOT, compose
from tests.unit.tasks.test_paper_tasks_on_tiny_models import FIXTURES, TASK_FILES

# how each task is built offline: its fixtures (the paper tasks' table), its committed snapshot, or generated data
OFFLINE = {
    **TASK_FILES,
    "humaneval_split": ["task.allow_code_execution=true"],
    "toy": ["task.options.n_eval=3"],
    "pydoc": [],
    "wordnet_revdict": [],
}
TASK_YAMLS = sorted(p.stem for p in (ROOT / "conf" / "task").glob("*.yaml"))
SCANNED = ("hizfo", "baselines", "analysis", "benchmarks", "scripts")


def test_every_configured_task_has_an_entry_and_an_offline_build():
    assert sorted(TASKS) == TASK_YAMLS == sorted(OFFLINE)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OFFLINE))
def test_score_returns_exactly_the_catalogues_keys(name, monkeypatch):
    import hizfo.tasks.humaneval as humaneval
    from hizfo.eval.sandbox import ProgramResult
    # the keys need no sandbox: every program "passes" here (the sandbox and pass@1 have their own tests)
    monkeypatch.setattr(humaneval, "humaneval_results", lambda completions, **_: {
        task_id: ProgramResult(True, "passed", 0, "", "", 0.0) for task_id in completions})
    task = instantiate(compose([f"task={name}", *(o.format(f=FIXTURES) for o in OFFLINE[name])]).task,
                       _convert_="all")
    examples = task.examples("eval")[:3]
    scores = task.score([e.target for e in examples], examples)
    assert set(scores) == set(score_of(name).returned), (name, sorted(scores))
    assert all(isinstance(v, float) for v in scores.values())


def test_the_score_of_the_other_webquestions_protocol_has_the_same_keys():
    task = instantiate(compose(["task=webquestions", "task.protocol=normalized",
                                *(o.format(f=FIXTURES) for o in OFFLINE["webquestions"])]).task, _convert_="all")
    examples = task.examples("eval")
    assert set(task.score([e.target for e in examples], examples)) == set(score_of("webquestions").returned)


def test_every_shown_key_has_one_decimals_and_a_unknown_task_is_refused():
    for name, task in TASKS.items():
        assert task.score.keys and task.display, name
        assert all(metric_decimals(key) == task.score.decimals for key in task.score.shown)
    with pytest.raises(ConfigError, match=r"task 'nonesuch': not in the task catalogue \(hizfo/tasks/catalogue.py"):
        entry("nonesuch")
    with pytest.raises(ConfigError, match="metric 'timed_out': no task shows it"):
        metric_decimals("timed_out")


def test_analysis_refuses_a_task_the_catalogue_lacks():
    # before the catalogue, an unknown task's column was silently read and headed as ROUGE
    import pandas as pd
    from analysis.cells import task_score
    from analysis.study.arms import task_metrics
    with pytest.raises(ConfigError, match="not in the task catalogue"):
        task_score("nonesuch")
    with pytest.raises(ConfigError, match="not in the task catalogue"):
        task_metrics("nonesuch", pd.DataFrame({"metric.rouge1": [1.0]}))
    assert task_metrics("wordnet_revdict", pd.DataFrame({"metric.exact_match": [1.0],
                                                         "metric.exact_match_word": [1.0]})) == \
        ("exact_match", "exact_match_word")


def metric_owners(source: str) -> list[int]:
    """Lines of dict literals that map a task name to one of the catalogue's metric keys: a second owner."""
    metrics = set().union(*(task.score.returned for task in TASKS.values()))
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Dict):
            continue
        keyed = [v for k, v in zip(node.keys, node.values) if isinstance(k, ast.Constant) and k.value in TASKS]
        if any(isinstance(c, ast.Constant) and c.value in metrics for v in keyed for c in ast.walk(v)):
            found.append(node.lineno)
    return found


def test_the_scan_finds_a_second_owner():
    assert metric_owners('TASK_METRICS = {"pydoc": ("rouge1", "rouge2"), "x": 1}\n') == [1]
    assert metric_owners('SIZES = {"pydoc": 2270}\n') == []


def test_no_module_but_the_catalogue_maps_a_task_to_its_metrics():
    sources = [p for package in SCANNED for p in sorted((ROOT / package).rglob("*.py"))]
    owners = {str(p.relative_to(ROOT)): metric_owners(p.read_text()) for p in sources}
    assert {p for p, lines in owners.items() if lines} == {"hizfo/tasks/catalogue.py"}, owners
