"""What a user meets: a log line per phase, all predictions on disk, the thread count used and
recorded, an unreachable hub that fails in seconds, short variant names for paths."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from hizfo.run.predictions import read_jsonl
from hizfo.run.runspec import predictions_path
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """One small Hi-ZFO run on the toy task, with progress bars on and stderr merged into stdout (a log file)."""
    tmp = tmp_path_factory.mktemp("run")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("TQDM_DISABLE", None)
    proc = subprocess.run([sys.executable, "run.py", "logger=none", f"results_dir={tmp}", "task.options.n_train=64",
                           "task.options.n_eval=8", "method.max_steps=4", "num_threads=1",
                           f"hydra.run.dir={tmp}/out"], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:]
    (path,) = tmp.rglob("seed0.json")
    return proc.stdout, path


@pytest.mark.subprocess
@pytest.mark.slow
def test_metrics_start_their_own_line_in_a_merged_log(small_run):
    log, _ = small_run
    assert len([line for line in log.splitlines() if line.startswith("metrics: rouge1=")]) == 1, log[-2000:]


@pytest.mark.slow
@pytest.mark.subprocess
def test_profiling_and_selection_print_progress(small_run):
    log, _ = small_run
    lines = log.splitlines()
    assert any(line.startswith("profiling: importance of ") for line in lines), log[-2000:]
    assert any(line.startswith("selection: ") and "tensors first-order" in line for line in lines)


@pytest.mark.slow
@pytest.mark.subprocess
def test_every_prediction_is_written_next_to_the_record(small_run):
    _, path = small_run
    record = json.loads(path.read_text())
    rows = read_jsonl(predictions_path(path))
    assert predictions_path(path).name == "seed0.predictions.jsonl"
    assert [r["index"] for r in rows] == list(range(8))                      # all 8, not only the 5 samples
    assert len(record["samples"]) == 5
    assert [r["prediction"] for r in rows[:5]] == [s["prediction"] for s in record["samples"]]
    assert all(r["references"] and r["prompt"].endswith("TL;DR:") for r in rows)
    assert not list(path.parent.glob(".*.tmp"))                               # no temp file left behind


@pytest.mark.slow
@pytest.mark.subprocess
def test_num_threads_is_recorded(small_run):
    _, path = small_run
    record = json.loads(path.read_text())
    assert record["config"]["num_threads"] == 1 and record["provenance"]["num_threads"] == 1


def test_num_threads_default_is_the_cpus_this_process_may_use(monkeypatch):
    from hizfo.run.threads import available_cpus, resolve_num_threads
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert resolve_num_threads(None) == len(os.sched_getaffinity(0))
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert available_cpus() == (3, "SLURM_CPUS_PER_TASK")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")                                  # the user's explicit request wins
    assert available_cpus() == (1, "OMP_NUM_THREADS")
    from hizfo.errors import ConfigError
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert resolve_num_threads(5) == 5                  # up to the CPUs it may use, whatever OMP_NUM_THREADS says
    with pytest.raises(ConfigError, match=r"^num_threads: must be <= 8, the CPUs this process may use, got 9"):
        resolve_num_threads(9)


@pytest.mark.subprocess
@pytest.mark.slow
def test_an_unreachable_hub_fails_in_one_line_within_seconds(tmp_path):
    # HF_HUB_OFFLINE unset, and a hub address nothing listens on: the probe must fail fast, then the cache only
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_ENDPOINT": "http://127.0.0.1:9", "HIZFO_HUB_TIMEOUT": "2",
           "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_OFFLINE", None)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "run.py", "model=opt-350m", "logger=none", f"results_dir={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    # the pre-load check (hizfo.run.validation.check_before_load) says it before the model's own loader would
    assert len(errors) == 1 and "the hub cannot be reached" in errors[0] and "model.path" in errors[0], errors
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 3, proc.stderr[-2000:]
    assert elapsed < 60, f"{elapsed:.0f} s"                                    # was ~50-96 s of retries


@pytest.mark.slow
def test_the_hub_probe_is_bounded_by_its_timeout(monkeypatch):
    import socket
    from hizfo import hub_probe
    monkeypatch.setenv("HIZFO_HUB_TIMEOUT", "1")
    with socket.socket() as silent:                       # accepts the connection, never answers: a hung hub
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        start = time.perf_counter()
        assert hub_probe._answers(f"http://127.0.0.1:{silent.getsockname()[1]}", hub_probe.probe_timeout()) is False
        assert 0.9 < time.perf_counter() - start < 5
    assert hub_probe._answers("http://127.0.0.1:9", 1.0) is False                             # refused


def test_path_overrides_appear_as_a_file_name_and_a_short_hash():
    from hizfo.run.runspec import short_variant_part
    a = short_variant_part("model.gguf_file", "/data/a/model.gguf")
    b = short_variant_part("model.gguf_file", "/data/b/model.gguf")
    assert a.startswith("model.gguf_file=model.gguf-") and len(a.rsplit("-", 1)[1]) == 8 and a != b
    assert short_variant_part("method.rho", "0.2") == "method.rho=0.2"
    assert short_variant_part("task.data_files", "{train: /x/a.jsonl}").startswith("task.data_files=")
    assert "/" not in short_variant_part("task.data_files", "{train: /x/a.jsonl}")


METHODS = sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml"))


@pytest.mark.subprocess
@pytest.mark.slow
def test_evaluation_only_writes_an_ok_record_for_every_method(tmp_path):
    """method.max_steps=0: set up, no update step, evaluate, an ok record; one sweep through run.py for all methods.
    Nothing trains, so every method that starts from the untouched model predicts what zero-shot predicts."""
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "run.py", "-m", f"method={','.join(METHODS)}", "method.max_steps=0",
                           "logger=none", f"results_dir={tmp_path}/runs", f"hydra.sweep.dir={tmp_path}/sweep",
                           "task.options.n_train=8", "task.options.n_eval=4", "task.generation.max_new_tokens=4",
                           "num_threads=1"], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    records = {p.parts[-3]: json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("seed0.json")}
    assert sorted(records) == METHODS
    for name, record in records.items():
        assert record["status"] == "ok", (name, record.get("error"))
        assert record["costs"]["steps"] == 0 and record["final_train_loss"] is None, name
        assert set(record["metrics"]) >= {"rouge1", "rougeL"}, name
    zero_shot = records["zero_shot"]
    adapters = {"lora", "bilevel_zofo"}             # add zero-initialised LoRA B: other tensors, the same outputs
    for name, record in records.items():
        if name == "prefix":                          # prefix-tuning prepends its (randomly initialised) tokens
            continue
        assert record["samples"] == zero_shot["samples"], name
        assert (record["final_params_sha256"] == zero_shot["final_params_sha256"]) == (name not in adapters), name
    for name in ("hizfo", "hizfo_random_dir", "hizfo_zo_off"):   # the partition is still profiled and recorded
        assert records[name]["partition"]["fo_params"] > 0 and records[name]["costs"]["n_backward"] == 2, name
    assert not list(tmp_path.rglob(".lock*"))


@pytest.mark.subprocess
@pytest.mark.slow
def test_a_failed_overwrite_keeps_the_ok_record_and_says_so(tmp_path):
    """overwrite=true reruns a finished run; when the rerun fails, the ok record stays and the message says that,
    instead of pointing at a failed record that was never written. Both runs in one process (tests/run_many.py)."""
    common = ["logger=none", f"results_dir={tmp_path}/runs", f"hydra.run.dir={tmp_path}/out", "method=full_ft",
              "method.max_steps=2", "task.options.n_train=8", "task.options.n_eval=2", "num_threads=1",
              "variant=v"]
    failing = [*common, "overwrite=true", "divergence_factor=1e-9", "divergence_patience=1"]   # stops at step 1
    proc = subprocess.run([sys.executable, "-m", "tests.run_many"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, input=f"{json.dumps(common)}\n{json.dumps(failing)}\n",
                          env={**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"})
    first, second = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert first["status"] == 0, first["stderr"][-2000:]
    (record,) = (tmp_path / "runs").rglob("seed0.json")
    assert second["status"] == 1
    failed = [line for line in second["stderr"].splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and failed[0].endswith(f"; the ok record at {record} was kept (overwrite=true: no failed "
                                                   f"record replaces it)"), second["stderr"][-2000:]
    assert json.loads(record.read_text())["status"] == "ok"
    assert not list(tmp_path.rglob(".lock*"))
