"""The share of Θ_FO's elements an AdamW step changed (``FirstOrderTrainer.changed_fraction``, logged as
``fo_changed_fraction``) is the whole tensors' share on every rank under FSDP2, not the share of one rank's shards:
two processes (gloo on CPU), a weight whose rows on rank 0 have a gradient and whose rows on rank 1 have none."""
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
