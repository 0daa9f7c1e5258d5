"""Quick in-process checks of the modules that otherwise only slow tests (end-to-end runs, subprocesses) reach, so
the fast tier (``FAST=1 bash scripts/test.sh``) loads and exercises every module (tests/unit/project/test_tiers.py)."""
from __future__ import annotations

import dataclasses
import os
from types import SimpleNamespace

import pytest


@pytest.mark.parametrize("name", ["full_ft", "ft_top2", "greentrainer", "mezo", "lora", "hizfo"])
def test_a_method_builds_from_its_schemas_defaults(name):
    # what Hydra does with conf/method/<name>.yaml, without composing: the schema's defaults into the class
    from hizfo.registry import METHODS, implementation
    schema = METHODS[name]
    values = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
              for f in dataclasses.fields(schema) if f.name not in ("_target_", "name")}
    method = implementation(name)(name=name, **values)
    assert type(method).__name__ == schema._target_.rpartition(".")[2]


def test_step_macs_and_the_epoch_estimate_by_hand():
    from hizfo.core.step_time import epoch_estimate, step_macs
    head, block = (SimpleNamespace(name="head", t_fp=1, t_dy=2, t_dw=3),
                   SimpleNamespace(name="block", t_fp=4, t_dy=5, t_dw=6))
    costs = [head, block]                                  # index 0 nearest the output
    assert step_macs(costs, "full_ft", {"head"}, {}) == 5 + (2 + 3)
    assert step_macs(costs, "mezo", {"head"}, {}) == 2 * 5
    assert step_macs(costs, "hizfo", {"head"}, {}) == 2 * 5 + 5
    assert step_macs(costs, "lora", set(), {}) == 5 + (2 + 5)        # adapters in every block: back to block 0
    estimate = epoch_estimate(costs, "full_ft", {"head"}, {}, "scitldr", batch=16, world_size=2, tflops=1.0)
    assert estimate.steps == 125 and estimate.seconds == pytest.approx(125 * 2 * 10 / 2e12)
    assert "125 steps" in estimate.line()
    assert epoch_estimate(costs, "full_ft", {"head"}, {}, "toy", batch=16, world_size=1, tflops=1.0) is None


def test_the_sandbox_runner_returns_plain_data_and_frames_messages():
    # the runner is the first code of each sandboxed interpreter (run by path); its pure parts run here
    from hizfo.eval import sandbox_runner as runner

    class Sneaky(int):
        def __eq__(self, other):
            return True
    assert type(runner.plain(Sneaky(3))) is int
    assert runner.plain({"a": (1, [2.5, frozenset({3})])}) == {"a": (1, [2.5, {3}])}
    with pytest.raises(TypeError, match="not plain data"):
        runner.plain(object())
    read, write = os.pipe()
    try:
        runner.send(write, b"hello")
        assert runner.receive(read, 100) == b"hello"
        runner.send(write, b"x" * 10)
        with pytest.raises(ValueError, match="over the 4-byte cap"):
            runner.receive(read, 4)
    finally:
        os.close(read)
        os.close(write)


def test_the_table_and_sweep_entry_points_run_the_papers_mains():
    import analysis.paper.sweeps
    import analysis.paper.tables
    from analysis import sweeps, tables
    assert tables.main is analysis.paper.tables.main and sweeps.main is analysis.paper.sweeps.main


def test_the_committed_presets_are_what_the_grid_generator_writes(capsys):
    from scripts.gen_experiment_grids import main
    assert main(["--check"]) == 0, capsys.readouterr().err


def test_the_pydoc_snapshots_sentence_rules():
    from scripts.make_pydoc_snapshot import first_sentence, keep_summary
    assert first_sentence("Return the sum, e.g. of two.  More.\n\nSecond paragraph.") == "Return the sum, e.g. of two."
    assert keep_summary("Return the sum of two numbers.", "add")
    assert not keep_summary("add(a, b) -> the sum of a and b.", "add") and not keep_summary("Add.", "add")


def test_the_wordnet_snapshots_definition_and_leak_rules():
    from scripts.make_wordnet_revdict_snapshot import definition, leaks, split_of
    assert definition('a member of the genus Canis;  "the dog barked all night"') == "a member of the genus Canis"
    assert leaks("dog", "a dogged animal") and leaks("canine", "relating to canines")
    assert not leaks("dog", "a member of the genus Canis")
    splits = [split_of(f"lemma{i}") for i in range(60)]
    assert set(splits) == {"train", "eval"} and splits == [split_of(f"lemma{i}") for i in range(60)]
