"""One run identity (hizfo.run.runspec) and one typed record (hizfo.run.records.RunRecord)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, compose
from hizfo.run.meters import Meters
from hizfo.run.records import Costs, Curve, RunRecord
from hizfo.run.runspec import REPORTING_KEYS, RunSpec, config_hash, derive_variant, is_reporting
from tests.unit.run.test_foundation import SMALL, run_cli

FIXTURES = ROOT / "tests" / "fixtures" / "records"


def spec_of(overrides: list[str]) -> RunSpec:
    from omegaconf import OmegaConf
    return RunSpec.build(OmegaConf.to_container(compose(overrides), resolve=True), overrides)


@pytest.mark.slow
def test_device_and_reporting_keys_do_not_split_a_run_but_hyperparameters_do():
    base = spec_of([])
    for extra in (["device=cpu"], ["eval_before_training=true"], ["logger=none"], ["num_threads=1"],
                  ["task.data_files.train=/a/b.jsonl"]):
        other = spec_of(extra)
        assert (other.config_hash, other.path) == (base.config_hash, base.path), extra
    for extra in (["method.rho=0.5"], ["train_dropout=true"], ["method.alpha_mode=loss"]):
        other = spec_of(extra)
        assert other.config_hash != base.config_hash and other.path != base.path, extra
    assert spec_of(["seed=3"]).config_hash != base.config_hash          # seeds are runs of their own
    assert derive_variant(["method.rho=0.5", "device=cpu", "seed=1"]) == "method.rho=0.5"
    assert is_reporting("task.data_files.eval") and not is_reporting("task.limit")


@pytest.mark.slow
def test_a_preset_named_variant_keeps_the_command_lines_changes():
    arm = ["experiment=smollm2_study", "+study_arm=pd_hizfo_rho0.2"]
    assert spec_of(arm).variant == "method.rho=0.2"
    assert spec_of(arm + ["method.max_steps=2"]).variant == "method.max_steps=2,method.rho=0.2"
    assert spec_of(arm + ["variant=mine", "method.max_steps=2"]).variant == "mine"


@pytest.mark.subprocess
@pytest.mark.slow
def test_same_command_then_device_cpu_skips_and_a_new_rho_is_a_new_variant(tmp_path):
    first = run_cli("method=full_ft", *SMALL, f"results_dir={tmp_path}")
    assert first.returncode == 0, first.stderr[-2000:]
    again = run_cli("method=full_ft", *SMALL, f"results_dir={tmp_path}", "device=cpu")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "skip: ok record exists" in again.stdout
    rho = run_cli("method=greentrainer", *SMALL, f"results_dir={tmp_path}", "method.rho=0.5")
    assert rho.returncode == 0 and "skip" not in rho.stdout
    assert (tmp_path / "tiny-opt" / "toy" / "greentrainer").is_dir()
    folders = {p.parent.name for p in tmp_path.rglob("seed0.json")}
    assert any("method.rho=0.5" in name for name in folders)
    record = RunRecord.read(next((tmp_path / "tiny-opt" / "toy" / "greentrainer").rglob("seed0.json")))
    # GreenTrainer's profiling passes and time are in its record (it selected once in this short run)
    assert record.costs.profilings >= 1 and record.costs.profiling_seconds > 0
    assert record.costs.n_forward == record.costs.steps + 2 * record.costs.profilings
    assert record.curve.train_loss and record.curve.every == 10


# every source file except RunSpec's own: none may keep a list of the keys that only report
KEY_MODULES = sorted(str(p.relative_to(ROOT)) for package in ("hizfo", "baselines", "analysis", "benchmarks")
                     for p in (ROOT / package).rglob("*.py") if p.name != "runspec.py") + ["run.py"]


def _lists_of_reporting_keys(source: str) -> list[tuple[int, list[str]]]:
    """The literal tuples/lists/sets naming two or more reporting keys (``device``, ``model.path``, ...)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            names = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            named = sorted(n for n in names if n in REPORTING_KEYS or ("." in n and is_reporting(n)))
            if len(named) >= 2:
                found.append((node.lineno, named))
    return found


def test_the_key_list_scan_finds_a_second_list():
    # what analysis/study.py once held: the nested reporting keys listed again
    planted = 'IGNORED = ("method.alpha_mode", "model.path", "model.device_map", "task.data_dir")\n'
    assert _lists_of_reporting_keys(planted) == [(1, ["model.device_map", "model.path", "task.data_dir"])]
    assert _lists_of_reporting_keys('KEYS = ("device", "num_threads")\n')
    assert not _lists_of_reporting_keys('ROW = {"variant": 1, "experiment": 2}\nONE = ("device",)\n')
    assert len(KEY_MODULES) > 60


@pytest.mark.parametrize("module", KEY_MODULES)
def test_no_other_module_keeps_its_own_list_of_reporting_keys(module):
    """A literal tuple/list/set naming several reporting keys would be a second source of run identity."""
    found = _lists_of_reporting_keys((ROOT / module).read_text())
    assert not found, f"{module}: lines {found} list reporting keys; ask hizfo.run.runspec (is_reporting) instead"


@pytest.mark.subprocess
def test_core_config_imports_no_plugin():
    code = "import sys, hizfo.config; print(any(m == 'baselines' or m.startswith('baselines.') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_a_record_round_trips_and_an_old_one_loads(tmp_path):
    record = RunRecord(status="ok", config={"seed": 0, "model": {"name": "m"}}, config_hash="abc",
                       metrics={"rouge1": 1.5}, costs=Costs(train_seconds=3.0, segments=2),
                       partition={"fo_tensors": 1}, method_summary={"zo_lr": 2e-6},
                       curve=Curve(every=10, train_loss=[[10, 2.5]], eval=[{"epoch": 0, "step": 10, "eval_loss": 2.0}]),
                       zo_seeds=[2**61 + 1])
    path = tmp_path / "seed0.json"
    record.write(path)
    again = RunRecord.read(path)
    assert again == record and again.resumed == 1
    assert again.zo_seeds == [2**61 + 1]                            # a 62-bit seed stays an exact int
    old = RunRecord.read(next((FIXTURES / "cpu").rglob("seed0.json")))
    assert old.status in ("ok", "failed") and old.curve.train_loss == [] and old.costs.segments is None
    v1 = json.loads(next((FIXTURES / "cpu" / "tiny-opt" / "toy" / "hizfo").rglob("seed0.json")).read_text())
    v1["partition"] = {"fo_tensors": 2, "zo_lr": 2e-4}
    v1.pop("schema_version", None)
    loaded = RunRecord.from_json(v1)
    assert loaded.partition == {"fo_tensors": 2} and loaded.method_summary == {"zo_lr": 2e-4}


def test_an_unknown_schema_version_is_one_line_naming_the_file():
    from hizfo.errors import ConfigError
    with pytest.raises(ConfigError, match=r"x/seed0.json: unknown record schema_version 99"):
        RunRecord.from_json({"schema_version": 99, "status": "ok"}, source="x/seed0.json")


def test_resumed_meters_sum_the_times_of_both_segments():
    cpu = torch.device("cpu")
    first = Meters()
    with first.timing("train_seconds", cpu):
        with first.timing("setup_seconds", cpu):
            time.sleep(0.05)
        time.sleep(0.1)
        saved = first.state_dict()                 # a checkpoint mid-training: the running timer counts
    assert saved["train_seconds"] >= 0.15 and saved["setup_seconds"] >= 0.05
    second = Meters()
    with second.timing("train_seconds", cpu):
        with second.timing("setup_seconds", cpu):
            time.sleep(0.05)                       # the relaunch sets up again: that costs time too
        second.load_state_dict(saved)
        time.sleep(0.1)
    assert second.segments == 2
    assert second.train_seconds >= saved["train_seconds"] + 0.15
    assert second.setup_seconds >= saved["setup_seconds"] + 0.05


@pytest.mark.subprocess
@pytest.mark.slow
def test_a_failed_run_never_replaces_an_ok_record(tmp_path):
    ok = run_cli("method=full_ft", *SMALL, f"results_dir={tmp_path}")
    assert ok.returncode == 0
    (path,) = tmp_path.rglob("seed0.json")
    before = path.read_bytes()
    failed = run_cli("method=full_ft", *SMALL, f"results_dir={tmp_path}", "overwrite=true", "method.lr=1e12",
                     "method.max_steps=30")
    assert failed.returncode != 0 and "diverged" in failed.stderr
    assert path.read_bytes() == before


def test_records_honour_the_umask(tmp_path):
    import os
    from hizfo.run.records import write_json_atomic
    previous = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "a" / "seed0.json", {"x": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "a" / "seed0.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o755


def test_parse_variant_inverts_derive_variant_and_paper_records_use_the_same_format():
    from analysis.paper.reference import PaperCell, variant_of
    from hizfo.run.runspec import parse_variant
    overrides = ["method.rho=0.2", "model.arch.hidden_size=64", "task.generation.stop=[a,b]", "device=cpu"]
    assert sorted(parse_variant(derive_variant(overrides))) == sorted(
        tuple(o.split("=", 1)) for o in overrides if o != "device=cpu")    # a reporting key is no part of it
    assert parse_variant("default") == [] and parse_variant(None) == []
    cell = PaperCell(model="opt-2.7b", task="scitldr", method="hizfo",
                     swept={"rho": 0.2, "alpha": None, "lr_ratio": 0.1}, metrics={}, costs={}, sources=["table4"])
    assert variant_of(cell) == derive_variant(["method.rho=0.2"]) == "method.rho=0.2"
