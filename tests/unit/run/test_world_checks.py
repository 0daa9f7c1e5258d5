"""Checks of a run on several processes that need no process group: the backend (hizfo/core/distributed.py
``pick_backend``: auto picks by device; a backend that cannot move the device's tensors is refused in one line) and
a global batch some rank would get no row of (hizfo/run/batching.py), both before any model loads."""
from __future__ import annotations

import pytest

import inspect

import torch

from hizfo.core import distributed
from hizfo.core.distributed import World, group_device, pick_backend
from hizfo.errors import ConfigError
from hizfo.run.batching import BatchStream, check_every_rank_has_rows


@pytest.mark.parametrize("world", ["1", "2"])
def test_auto_picks_nccl_on_cuda_and_gloo_on_cpu(monkeypatch, world: str):
    monkeypatch.setenv("WORLD_SIZE", world)
    assert pick_backend("auto", "cuda") == "nccl" and pick_backend("auto", "cpu") == "gloo"


def test_gloo_on_cuda_under_several_processes_is_refused(monkeypatch):
    # FSDP2's mesh would be a CPU one and move every shard off the GPU while the batches stay on it
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"^backend: gloo with device cuda under several processes.*backend=auto"):
        pick_backend("gloo", "cuda")
    assert pick_backend("gloo", "cpu") == "gloo"
    monkeypatch.setenv("WORLD_SIZE", "1")                     # one process: no group, nothing to refuse
    assert pick_backend("gloo", "cuda") == "gloo"


def test_nccl_without_cuda_is_refused(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^backend: nccl needs CUDA GPUs and this machine has none; use backend=gloo"):
        pick_backend("nccl", "cpu")


def test_nccl_binds_each_rank_to_its_own_gpu_before_the_group_exists(monkeypatch):
    # nccl places an object broadcast's tensor on the current CUDA device: unbound, every rank would use GPU 0
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert group_device("nccl") == torch.device("cuda", 3)
    assert group_device("gloo") is None
    source = inspect.getsource(distributed.init)    # bound before the group's first collective, passed to it
    assert source.index("torch.cuda.set_device(device)") < source.index("init_process_group(backend=backend, "
                                                                        "device_id=device)")


def test_an_unknown_backend_is_named():
    with pytest.raises(ConfigError, match="backend: 'mpi' is not one of"):
        pick_backend("mpi", "cpu")


@pytest.mark.parametrize("n, world, refused", [(12, 4, False), (13, 4, True), (14, 4, True), (15, 4, False),
                                               (16, 4, False), (5, 4, True), (9, 4, True), (3, 2, False)])
def test_a_last_batch_that_leaves_a_rank_no_row_is_refused(n: int, world: int, refused: bool):
    """Global batch 8; each rank takes ceil(rows / world) rows of the last batch, so the last rank gets none when
    (world - 1) * ceil(rows / world) >= rows: 13 examples leave 5 rows, sliced 2, 2, 1, 0 (refused, though the
    remainder 5 is at least 4, which the old advice said was enough); 15 leave 7, sliced 2, 2, 2, 1."""
    import torch
    encoded = [{"input_ids": [1, 2], "labels": [1, 2]} for _ in range(n)]
    stream = BatchStream(encoded, 8, 0, 0, torch.device("cpu"), world=World(rank=0, size=world))
    rows = n % 8 or 8
    assert ((world - 1) * -(-rows // world) >= rows) == refused          # the cases say what the slicing does
    if refused:
        with pytest.raises(ConfigError, match=rf"last global batch has {rows} example\(s\).*multiple of {world}$"):
            check_every_rank_has_rows(stream, "train")
    else:
        check_every_rank_has_rows(stream, "train")
