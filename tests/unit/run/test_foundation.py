"""The spine: configs compose, the loop learns, records are complete and atomic, bad input fails cleanly."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, compose, tiny

GROUP_OPTIONS = {g: sorted(p.stem for p in (ROOT / "conf" / g).glob("*.yaml")) for g in ("model", "task", "method")}
SMALL = ["logger=none", "task.options.n_train=64", "task.options.n_eval=8", "method.max_steps=6"]


def run_cli(*overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python run.py <overrides>`` in a subprocess, as a user would run it."""
    env = {**os.environ, "TQDM_DISABLE": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "run.py", *overrides], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("group", ["model", "task", "method"])
def test_every_group_option_composes(group):
    for option in GROUP_OPTIONS[group]:
        cfg = compose([f"{group}={option}"])
        assert cfg[group].name == option


@pytest.mark.slow
def test_every_method_composes_with_every_task():
    for method in GROUP_OPTIONS["method"]:
        for task in GROUP_OPTIONS["task"]:
            cfg = compose([f"method={method}", f"task={task}"])
            assert cfg.method.lr >= 0 and cfg.task.batch_size >= 1


@pytest.mark.slow
def test_a_typo_fails_at_composition():
    from hydra.errors import ConfigCompositionException
    with pytest.raises(ConfigCompositionException):
        compose(["method.learning_rate=0.1"])
    with pytest.raises(ConfigCompositionException):
        compose(["method.lr=fast"])


def test_tiny_models_of_each_family_run_a_forward_pass():
    for name in ("tiny-opt", "tiny-qwen2", "tiny-bloom"):
        loaded = tiny(name)
        ids = loaded.tokenizer("rain snow wind TL;DR:", return_tensors="pt").input_ids
        out = loaded.model(input_ids=ids, labels=ids)
        assert torch.isfinite(out.loss)


@pytest.mark.slow
def test_full_ft_lowers_the_loss_and_learns_the_toy_task():
    from baselines.full_ft import FullFT
    from hizfo.run.loop import LoopOptions, train_and_evaluate
    from hizfo.run.meters import Meters
    from hydra.utils import instantiate
    cfg = compose(["method=full_ft", "method.max_steps=80", "task.options.n_eval=24"])
    loaded, task = tiny("tiny-opt"), instantiate(cfg.task, _convert_="all")
    method = FullFT(**{k: v for k, v in cfg.method.items() if k != "_target_"})
    result = train_and_evaluate(method, cfg.method, loaded, task,
                                LoopOptions(torch.device("cpu"), seed=0, eval_before_training=True), Meters())
    losses = [row["train/loss"] for row in result.history]
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    assert result.metrics["rouge1"] > result.metrics["before_rouge1"] + 20


def test_atomic_write_keeps_the_old_record_when_writing_fails(tmp_path):
    from hizfo.run.records import write_json_atomic
    path = tmp_path / "a" / "seed0.json"
    write_json_atomic(path, {"status": "ok", "n": 1})

    class Unserialisable:
        def __repr__(self):
            raise RuntimeError("boom")

    with pytest.raises(Exception):
        write_json_atomic(path, {"status": "ok", "bad": {1j: Unserialisable()}})
    assert json.loads(path.read_text()) == {"status": "ok", "n": 1}
    assert [p.name for p in path.parent.iterdir()] == ["seed0.json"]


def test_variant_comes_from_overrides_that_change_the_computation():
    from hizfo.run.runspec import derive_variant
    assert derive_variant(["method=hizfo", "logger=none", "results_dir=/x", "seed=3"]) == "default"
    assert derive_variant(["method.rho=0.2", "method=hizfo", "task.limit=5"]) == "method.rho=0.2,task.limit=5"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    proc = run_cli("method=full_ft", f"results_dir={results}", *SMALL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = list(results.rglob("seed0.json"))
    assert len(records) == 1
    return results, records[0], proc


@pytest.mark.subprocess
@pytest.mark.slow
def test_record_holds_what_the_readme_promises(finished_run):
    _, path, proc = finished_run
    record = json.loads(path.read_text())
    assert record["status"] == "ok" and record["error"] is None
    assert path.relative_to(path.parents[4]).as_posix() == "tiny-opt/toy/full_ft/method.max_steps=6,task.options.n_eval=8,task.options.n_train=64/seed0.json"
    for key in ("peak_memory_gb", "memory_kind", "train_seconds", "eval_seconds", "n_forward", "n_backward",
                "trainable_params"):
        assert key in record["costs"], key
    assert record["costs"]["n_forward"] == record["costs"]["n_backward"] == 6
    assert record["costs"]["memory_kind"].startswith("cpu_peak_rss") and record["costs"]["peak_memory_gb"] > 0
    assert {"rouge1", "rouge2", "rougeL", "exact_match"} <= set(record["metrics"])
    assert record["config"]["method"]["name"] == "full_ft" and record["config"]["seed"] == 0
    prov = record["provenance"]
    assert len(prov["git_sha"] or "") == 40 and isinstance(prov["git_dirty"], bool)
    assert prov["packages"]["torch"] and prov["device"] == "cpu"
    assert f"record: {path}" in proc.stdout


@pytest.mark.subprocess
@pytest.mark.slow
def test_a_finished_run_is_skipped(finished_run):
    results, path, _ = finished_run
    before = path.stat().st_mtime_ns
    proc = run_cli("method=full_ft", f"results_dir={results}", *SMALL)
    assert proc.returncode == 0 and "skip: ok record exists" in proc.stdout
    assert path.stat().st_mtime_ns == before


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.parametrize("override,key", [
    ("method.lr=-1", "method.lr"),
    ("method.epochs=0", "method.epochs"),
    ("task.batch_size=0", "task.batch_size"),
    ("task.max_input_length=3", "task.max_input_length"),
    ("results_dir=/dev/null/results", "results_dir"),
    ("model=opt-350m", "model.path"),
])
def test_bad_input_fails_in_one_line_and_writes_no_ok_record(tmp_path, override, key):
    results = override.split("=", 1)[1] if override.startswith("results_dir") else str(tmp_path)
    args = [o for o in SMALL if not o.startswith(override.split("=")[0])]
    proc = run_cli("method=full_ft", *args, f"results_dir={results}", override)
    assert proc.returncode == 2, proc.stderr[-1500:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and key in lines[0], proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr
    assert not any(json.loads(p.read_text()).get("status") == "ok" for p in tmp_path.rglob("*.json"))


@pytest.mark.subprocess
@pytest.mark.slow
def test_an_unknown_group_option_lists_the_choices(tmp_path):
    proc = run_cli("method=nope", f"results_dir={tmp_path}")
    assert proc.returncode != 0
    assert "Available options" in proc.stderr and "full_ft" in proc.stderr


@pytest.mark.subprocess
@pytest.mark.slow
def test_a_diverging_run_leaves_a_failed_record_naming_the_step(tmp_path):
    proc = run_cli("method=full_ft", f"results_dir={tmp_path}", *SMALL, "method.lr=1e12", "method.max_steps=30")
    assert proc.returncode == 1
    (path,) = tmp_path.rglob("seed0.json")
    record = json.loads(path.read_text())
    assert record["status"] == "failed" and record["failed_step"] is not None
    assert f"step {record['failed_step']}" in record["error"]
