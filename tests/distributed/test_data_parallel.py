"""Several processes compute the same run as one, on CPU with gloo: torchrun with 2 processes against one
process, on the tiny OPT and the toy task. Two processes at one thread each (the box has 2 cores)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT

pytestmark = pytest.mark.distributed
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
MEZO = ["method=mezo", "method.max_steps=6", "task.options.n_eval=8", "num_threads=1", "logger=none"]


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, module: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(_free_port()), *module]
    return subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def worker(tmp_path: Path, nproc: int, overrides: list[str]) -> tuple[dict, dict[str, torch.Tensor]]:
    out = tmp_path / f"n{nproc}"
    if nproc == 1:
        proc = subprocess.run([sys.executable, "-m", "tests.distributed.worker", str(out), *overrides], cwd=ROOT,
                              env=ENV, capture_output=True, text=True, timeout=300)
    else:
        proc = torchrun(nproc, ["-m", "tests.distributed.worker", str(out), *overrides])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "result.json").read_text()), torch.load(out / "params.pt")


@pytest.fixture(scope="module")
def mezo_runs(tmp_path_factory) -> dict[int, tuple[dict, dict[str, torch.Tensor]]]:
    tmp = tmp_path_factory.mktemp("mezo")
    return {n: worker(tmp, n, MEZO) for n in (1, 2)}


def _fresh_weights() -> dict[str, torch.Tensor]:
    from tests.conftest import tiny
    return tiny("tiny-opt").model.state_dict()              # the run's start: random init, seed 0


def test_mezo_on_two_processes_takes_the_same_steps_as_on_one(mezo_runs):
    (one, p1), (two, p2) = mezo_runs[1], mezo_runs[2]
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["zo_seeds"] == one["zo_seeds"] and len(one["zo_seeds"]) == 6
    # the global batch's mean token loss, up to fp32 forward noise: each rank pads its own slice (other matmul
    # shapes) and the ranks' sums add in another order (measured: at most 1e-6 relative over 6 steps)
    assert max(abs(a - b) / abs(a) for a, b in zip(one["losses"], two["losses"])) < 1e-5
    fresh = _fresh_weights()
    assert p1.keys() == p2.keys()
    # that noise reaches the weights through g = (L+ - L-) / 2ε, amplified 1/(2ε) = 500 times: measured 8e-6 of the
    # largest weight, 3.5e-4 of a tensor's own update. A rank that stepped on its half-batch's loss alone (no
    # all-reduce) moves every tensor by another g: O(1) of its update
    largest = max(float(p.abs().max()) for p in p1.values())
    assert max(float((p1[k] - p2[k]).abs().max()) for k in p1) / largest < 1e-4
    for k in p1:
        update = float((p1[k] - fresh[k]).abs().max())
        if update > 0:
            assert float((p1[k] - p2[k]).abs().max()) / update < 1e-2, k
    assert two["metrics"] == one["metrics"] and two["predictions"] == one["predictions"]


def test_the_weights_moved(mezo_runs):
    # the equality above would hold for an untrained model too: the run must change every trained tensor
    fresh = _fresh_weights()
    _, p1 = mezo_runs[1]
    assert all(not torch.equal(fresh[k], p1[k]) for k in p1 if k in fresh and "embed_positions" not in k)


def test_run_py_under_torchrun_writes_one_record_from_rank_0(tmp_path):
    results = tmp_path / "runs"
    proc = torchrun(2, ["run.py", *MEZO, f"results_dir={results}", f"hydra.run.dir={tmp_path / 'out'}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = results.rglob("seed0.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok"
    prov = record["provenance"]
    assert prov["world_size"] == 2 and prov["backend"] == "gloo" and len(prov["rank_peak_memory_bytes"]) == 2
    assert record["costs"]["peak_memory_gb"] * 2**30 >= max(prov["rank_peak_memory_bytes"]) - 1
    assert proc.stdout.count("record: ") == 1                  # the summary from rank 0 only
    # the world size reports, it does not compute: the same config_hash as a one-process run of the config
    from hizfo.run.runspec import RunSpec
    from hizfo.run.session import compose
    from omegaconf import OmegaConf
    overrides = [*MEZO, f"results_dir={results}"]
    assert RunSpec.build(OmegaConf.to_container(compose(overrides), resolve=True), overrides).config_hash \
        == record["config_hash"]


@pytest.mark.parametrize("overrides, says", [
    (["task.batch_size=3"], "task.batch_size: the global batch 3 does not split over 2 processes"),
    (["method=full_ft"], "method: full_ft cannot run on several processes yet"),
    (["backend=nccl"], "backend: nccl needs CUDA"),
])
def test_bad_input_under_torchrun_is_one_line_from_rank_0(tmp_path, overrides, says):
    proc = torchrun(2, ["run.py", "method=mezo", "method.max_steps=2", "logger=none", "num_threads=1",
                        f"results_dir={tmp_path / 'runs'}", f"hydra.run.dir={tmp_path / 'out'}", *overrides])
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and says in errors[0], proc.stderr[-3000:]
    # no worker prints a traceback (torchrun's own report of the failed ranks follows, in its own frames)
    assert f'File "{ROOT / "hizfo"}' not in proc.stderr and f'File "{ROOT / "run.py"}' not in proc.stderr
    assert not list((tmp_path / "runs").rglob("*.json"))
