"""First-order state on FSDP2's shards, two processes (gloo on CPU):
- the share of Θ_FO's elements an AdamW step changed (``FirstOrderTrainer.changed_fraction``, logged as
  ``fo_changed_fraction``) is the whole tensors' share on every rank, not the share of one rank's shards (a weight
  whose rows on rank 0 have a gradient and whose rows on rank 1 have none);
- precision=bf16's fp32 masters of sharded tensors are shards themselves, and a checkpoint's masters load into
  them (a plain placeholder given a DTensor through ``.data`` crashed the process at the first step, and
  ``.data =`` on a DTensor master left it as it was, so a resumed run stepped from its first masters)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.distributed.spawn import spawn_gloo

pytestmark = pytest.mark.distributed
WORLD = 2


def _rank(rank: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from hizfo.core.methods import FirstOrderTrainer
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8, bias=False))
    fully_shard(model, mesh=init_device_mesh("cpu", (WORLD,)))
    (weight,) = model.parameters()
    assert isinstance(weight, DTensor) and weight.to_local().shape == (4, 4)       # rows 0-3 on rank 0
    trainer = FirstOrderTrainer(model, {"0.weight"}, lr=1e-2, weight_decay=0.0, schedule="constant", total_steps=1)
    # AdamW moves an element only where its gradient is non-zero (no weight decay): rank 0's half of the rows
    weight.grad = torch.distributed.tensor.distribute_tensor(
        torch.cat([torch.ones(4, 4), torch.zeros(4, 4)]), weight.device_mesh, weight.placements)
    trainer.step()
    assert trainer.changed_fraction == pytest.approx(0.5), (rank, trainer.changed_fraction)


def test_the_changed_share_is_the_whole_tensors_on_every_rank(tmp_path: Path):
    spawn_gloo(_rank, (), WORLD, tmp_path)


def _masters(rank: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from hizfo.core.precision import MasterWeights
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8, bias=False)).to(torch.bfloat16)
    fully_shard(model, mesh=init_device_mesh("cpu", (WORLD,)))
    (weight,) = model.parameters()
    masters = MasterWeights([weight])
    (master,) = masters.masters
    assert isinstance(master, DTensor) and master.to_local().dtype == torch.float32
    assert torch.equal(master.to_local(), weight.to_local().float())
    saved = masters.state_dict()
    with torch.no_grad():
        master.add_(1.0)
    masters.load_state_dict(saved)                               # as a resume does, after DCP filled ``saved``
    assert torch.equal(master.to_local(), weight.to_local().float()), "the saved masters were not loaded"
    weight.grad = torch.distributed.tensor.distribute_tensor(torch.ones(8, 4, dtype=torch.bfloat16),
                                                             weight.device_mesh, weight.placements)
    masters.take_grads()
    assert weight.grad is None and float(master.grad.to_local().sum()) == master.to_local().numel()
    with torch.no_grad():
        master.add_(0.5)
    masters.publish()
    assert torch.equal(weight.to_local(), (saved[0].to_local() + 0.5).to(torch.bfloat16))


def test_bf16_masters_of_shards_are_shards_and_load_from_a_checkpoint(tmp_path: Path):
    spawn_gloo(_masters, (), WORLD, tmp_path)
