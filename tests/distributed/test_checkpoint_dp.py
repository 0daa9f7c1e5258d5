"""Checkpoints of a run on several processes (torch.distributed.checkpoint, every rank its shard), on CPU with gloo:
a 2-process run killed mid-epoch resumes bit-exact; one process resumes a 2-process checkpoint (resharded); the
record of an N-process run is rank 0's alone and has the one-process run's config hash.

Hi-ZFO exercises every kind of state at once: Θ_FO sharded by FSDP2 with its AdamW moments, Θ_ZO replicated, the
profiling's selection, the ZO seed generator. Every other method's checkpoint at 1 and 2 processes (Prefix-Tuning's
sharded prefix encoder, which once failed its end-of-training checkpoint, among them) is written and read back into
zeroed weights and zeroed optimizer state, bit for bit, by tests/distributed/worker.py."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, finished_checkpoints
from tests.distributed.test_data_parallel import ENV, torchrun_prefix

pytestmark = [pytest.mark.distributed, pytest.mark.subprocess]
ARGS = ["method=hizfo", "method.max_steps=12", "checkpoint_every=3", "task.options.n_eval=8", "num_threads=1",
        "logger=none", "curve_every=1"]


def launch(nproc: int, results: Path, *extra: str, args: list[str] = ARGS, script: str = "run.py",
           env: dict[str, str] = ENV) -> subprocess.Popen:
    hydra = f"hydra.run.dir={results.parent / ('out-' + results.name)}"
    prefix = [sys.executable] if nproc == 1 else torchrun_prefix(nproc)
    return subprocess.Popen([*prefix, script, *args, f"results_dir={results}", hydra, *extra], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out, err


def record(results: Path) -> dict:
    (path,) = results.rglob("seed0.json")
    return json.loads(path.read_text())


def kill_after_first_checkpoint(proc: subprocess.Popen, checkpoints: Path) -> Path:
    """SIGKILL the launcher and both workers as soon as a checkpoint's manifest exists: a run that dies
    mid-epoch, between two checkpoints, with no chance to clean up."""
    deadline = time.monotonic() + 240
    while not finished_checkpoints(checkpoints):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    for pid in [*workers, str(proc.pid)]:             # torchrun starts its workers in sessions of their own
        subprocess.run(["kill", "-KILL", pid], check=False)
    proc.communicate(timeout=60)
    return finished_checkpoints(checkpoints)[-1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """a: 2 processes, uninterrupted; b: 2 processes killed after the first checkpoint, then run again (its
    checkpoint folder copied to c first); c: that 2-process checkpoint resumed by one process."""
    tmp = tmp_path_factory.mktemp("dpckpt")
    # run.py as it is (tests/distributed/failing_run.py injects nothing here), each rank saying at exit how many
    # FSDP2 modules are left for the interpreter's teardown
    whole = launch(2, tmp / "a" / "runs", script="tests/distributed/failing_run.py",
                   env={**ENV, "HIZFO_TEST_COUNT_AT_EXIT": "1", "PYTHONPATH": str(ROOT)})
    (tmp / "a.err").write_text(finish(whole)[1])
    killed = launch(2, tmp / "b" / "runs")
    step = kill_after_first_checkpoint(killed, tmp / "b" / "checkpoints")
    (tmp / "killed_at").write_text(step.name)
    assert not list((tmp / "b" / "runs").rglob("seed0.json")), "a killed run left a record"
    shutil.copytree(tmp / "b" / "checkpoints", tmp / "c" / "checkpoints")
    shutil.copytree(step, tmp / "kept")
    (tmp / "b.err").write_text("".join(finish(launch(2, tmp / "b" / "runs"))))
    (tmp / "c.err").write_text("".join(finish(launch(1, tmp / "c" / "runs"))))
    return tmp


def test_a_killed_two_process_run_resumes_bit_exact(runs):
    whole, resumed = record(runs / "a" / "runs"), record(runs / "b" / "runs")
    step = int((runs / "killed_at").read_text().split("-")[1])
    err = (runs / "b.err").read_text()
    assert err.count(f"resumed from ") == 1 and f"at step {step}\n" in err      # rank 0 says it, once
    assert 0 < step < 12
    assert resumed["final_params_sha256"] == whole["final_params_sha256"]
    assert resumed["curve"]["train_loss"] == whole["curve"]["train_loss"]
    assert resumed["zo_seeds"] == whole["zo_seeds"] and resumed["metrics"] == whole["metrics"]
    assert not (runs / "b" / "checkpoints").exists() or not list((runs / "b" / "checkpoints").rglob("step-*"))


def test_one_process_resumes_a_two_process_checkpoint(runs):
    whole, resharded = record(runs / "a" / "runs"), record(runs / "c" / "runs")
    assert "resumed from " in (runs / "c.err").read_text()
    assert resharded["provenance"]["world_size"] == 1 and resharded["zo_seeds"] == whole["zo_seeds"]
    step = int((runs / "killed_at").read_text().split("-")[1])
    a, c = (dict((int(s), v) for s, v in r["curve"]["train_loss"]) for r in (whole, resharded))
    assert [a[s] for s in sorted(a) if s <= step] == [c[s] for s in sorted(c) if s <= step]   # restored as saved
    # after it, one process sums each batch in another order than two: the N-process tolerance (1e-5 relative)
    assert max(abs(a[s] - c[s]) / abs(a[s]) for s in a) < 1e-5
    assert resharded["metrics"] == whole["metrics"]


def test_run_py_under_torchrun_writes_one_record_from_rank_0(runs):
    whole = record(runs / "a" / "runs")
    assert whole["status"] == "ok"
    prov = whole["provenance"]
    assert prov["world_size"] == 2 and prov["backend"] == "gloo" and len(prov["rank_peak_memory_bytes"]) == 2
    assert whole["costs"]["peak_memory_gb"] * 2**30 >= max(prov["rank_peak_memory_bytes"]) - 1
    assert len(list((runs / "a" / "runs").rglob("*.json"))) == 1
    # the world size reports, it does not compute: the same config_hash as a one-process run of the config
    from omegaconf import OmegaConf

    from hizfo.run.runspec import RunSpec
    from hizfo.run.session import compose
    overrides = [*ARGS, f"results_dir={runs / 'a' / 'runs'}"]
    assert RunSpec.build(OmegaConf.to_container(compose(overrides), resolve=True), overrides).config_hash \
        == whole["config_hash"]


def test_a_run_leaves_no_fsdp_module_to_the_interpreters_teardown(runs):
    """Left alive past the group's end, FSDP2's modules (which hold the group and their collectives' work) were
    destroyed in the interpreter's teardown, which ended a rank in ``terminate called without an active
    exception`` about once in a dozen 2-process runs."""
    said = [line for line in (runs / "a.err").read_text().splitlines() if "FSDP2 modules alive at exit" in line]
    assert sorted(said) == [f"rank {r}: FSDP2 modules alive at exit: 0" for r in (0, 1)]


def test_a_two_process_checkpoint_is_every_rank_shard_under_one_manifest(runs, tmp_path):
    from hizfo.run.checkpoint_files import verify_checkpoint
    copy = tmp_path / "step"
    shutil.copytree(runs / "kept", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["layout"] == "distributed"
    assert {"dcp/.metadata", "dcp/__0_0.distcp", "dcp/__1_0.distcp", "rank-0.pt", "rank-1.pt", "state.json",
            "method.pt"} <= set(manifest["files"])
    assert verify_checkpoint(copy) is None
    shard = copy / "dcp" / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:-7])                  # a rank's shard cut short: not trusted
    assert "dcp/__1_0.distcp is truncated" in verify_checkpoint(copy)


def _worker_of_rank(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of torchrun's worker of ``rank`` (its RANK in the environment torchrun gave it)."""
    for pid in subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split():
        if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            return int(pid)
    raise AssertionError(f"no worker of rank {rank} under {launcher.pid}")


def test_a_signal_to_one_rank_stops_every_rank_after_one_checkpoint(tmp_path):
    """SIGTERM to rank 1 alone: the ranks agree a signal came (hizfo/run/checkpoint.py), rank 0 takes rank 1's,
    both write the step's checkpoint and pass SIGTERM on, so no rank trains on into a collective the other left;
    the relaunch resumes from that checkpoint and ends ok."""
    results = tmp_path / "runs"
    # long enough that the signal, sent once step 3's checkpoint exists, comes many steps before the end (a step is
    # ~0.1 s here); short enough that the relaunch, which trains the rest, stays cheap
    long = [a if not a.startswith("method.max_steps=") else "method.max_steps=40" for a in ARGS]
    proc = launch(2, results, args=long)
    deadline = time.monotonic() + 240
    while not finished_checkpoints(tmp_path / "checkpoints"):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    os.kill(_worker_of_rank(proc, 1), signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    said = out + err
    assert proc.returncode != 0 and said.count("passing the signal on") == 1, said[-3000:]   # rank 0 says it once
    assert not list(results.rglob("seed0.json")), "a stopped run left a record"
    last = max((p for p in (tmp_path / "checkpoints").rglob("step-*") if (p / "manifest.json").exists()),
               key=lambda p: p.name)
    saved = json.loads((last / "state.json").read_text())
    assert saved["reason"] == "SIGTERM" and saved["world_size"] == 2
    said = "".join(finish(launch(2, results, args=long)))
    assert f"at step {saved['step']}\n" in said and record(results)["status"] == "ok"
