"""ZO noise on FSDP2's sharded parameters (hizfo/core/zo.py): two processes (gloo on CPU, one thread each) hold
Shard(0) DTensors, uneven and empty shards included, and perturb them through ``ZOParams``; gathered, every tensor
is what one process computes on the whole tensors, bit for bit. Single-process checks: tests/unit/core/test_zo_shards.py.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.distributed.spawn import spawn_gloo

pytestmark = pytest.mark.distributed
WORLD = 2


def _model() -> nn.Module:
    """Weights of 7, 3 and 1 rows (uneven over 2 ranks; one row: the second rank holds nothing of it)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3), nn.Linear(3, 1))


def _bytes(t: torch.Tensor) -> bytes:
    return t.detach().reshape(-1).view(torch.uint8).numpy().tobytes()


def _rank(rank: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Shard

    from hizfo.core import zo
    zo.CHUNK_CPU = 16                                           # chunk boundaries inside and across the tensors
    whole = list(_model().parameters())
    model = _model()
    mesh = init_device_mesh("cpu", (WORLD,))
    fully_shard(model[0], mesh=mesh)
    fully_shard(model, mesh=mesh)
    params = list(model.parameters())
    assert all(isinstance(p, DTensor) and tuple(p.placements) == (Shard(0),) for p in params)
    for p, piece in zip(params, zo.pieces_of(params)):         # torch.chunk's rows: ceil(n/2) on rank 0
        per = math.ceil(p.shape[0] / WORLD)
        first = min(rank * per, p.shape[0])
        assert piece.offset == first * math.prod(p.shape[1:]) and piece.numel == p.numel()
        assert piece.local.data_ptr() == p.to_local().data_ptr()
    got = [u.full_tensor() for u in zo.noise_like(params, 31)]
    assert [_bytes(u) for u in got] == [_bytes(u) for u in zo.noise_like(whole, 31)]
    sharded, one = zo.ZOParams(params), zo.ZOParams(whole)
    for move in (lambda z: z.perturb(31, 1e-3), lambda z: z.perturb(31, -2e-3), lambda z: z.restore(-5e-4)):
        move(sharded)
        move(one)
        assert [_bytes(p.full_tensor()) for p in params] == [_bytes(p) for p in whole]


def test_fsdp2_shards_perturbed_by_two_processes_gather_to_the_one_process_bytes(tmp_path: Path):
    spawn_gloo(_rank, (), WORLD, tmp_path)
