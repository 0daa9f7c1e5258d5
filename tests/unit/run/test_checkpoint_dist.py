"""The distributed checkpoint layout (hizfo/run/checkpoint_dist.py) written and read in one process (DCP needs no
process group for that): the method's tensors come back as saved, and a checkpoint whose method tensors have
other shapes than this run's (another selection, as a profile on the shards at another world size makes) is
refused in one line naming the world size that wrote it, before DCP would fail with a traceback."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from hizfo.core.distributed import World
from hizfo.errors import ConfigError
from hizfo.run.checkpoint_dist import read_distributed, write_shards, write_state
from hizfo.run.loop import LoopState
from hizfo.run.meters import Meters


class _Method:
    """What the layout asks of a method: its model, and a state with a tensor whose shape the selection sets."""

    def __init__(self, selected: int) -> None:
        torch.manual_seed(0)
        self.model = nn.Linear(3, 2)
        self.moment = torch.zeros(selected)

    def eval_model(self) -> nn.Module:
        return self.model

    def state_dict(self) -> dict:
        return {"moment": self.moment, "names": ["w"] * len(self.moment)}

    def load_state_dict(self, state: dict) -> None:
        self.moment = state["moment"]


def _written(folder: Path, selected: int, world_size: int) -> _Method:
    method = _Method(selected)
    method.moment += torch.arange(selected, dtype=torch.float32)
    folder.mkdir()
    write_shards(folder, method, Meters(), None, World())
    write_state(folder, method, LoopState(step=3), "hash", "periodic", World(size=world_size))
    return method


def test_method_tensors_come_back_as_written(tmp_path: Path):
    saved = _written(tmp_path / "step-3", 4, 1)
    method, state = _Method(4), LoopState()
    read_distributed(tmp_path / "step-3", method, state, Meters(), None, "hash", tmp_path, World())
    assert torch.equal(method.moment, saved.moment) and state.step == 3


@pytest.mark.parametrize("saved_world, advice", [(2, "written by 2 processes and this run has 1"),
                                                  (1, "resume it with the config that wrote it")])
def test_other_shapes_are_refused_in_one_line_naming_the_world_size(tmp_path: Path, saved_world: int, advice: str):
    _written(tmp_path / "step-3", 4, saved_world)
    with pytest.raises(ConfigError) as refused:
        read_distributed(tmp_path / "step-3", _Method(5), LoopState(), Meters(), None, "hash", tmp_path, World())
    message = str(refused.value)
    assert "'moment' of shape (4,), this run's has (5,)" in message and advice in message
    assert "\n" not in message


def test_the_final_hash_takes_whole_tensors_one_at_a_time_and_digests_as_a_mapping():
    """The record's final_params_sha256 under several processes hashes ``distributed.whole_parameters``, which
    gathers one sharded tensor at a time: the hash must drop each before drawing the next (not the whole model
    gathered on every rank at once), and give the digest the mapping of the same tensors gives."""
    import weakref

    from hizfo.core.distributed import full_parameters, whole_parameters
    from hizfo.run.checkpoint_files import params_sha256, tensors_sha256
    alive: list[weakref.ref] = []
    most = 0

    def gathered():
        nonlocal most
        for i in range(4):
            t = torch.full((256,), float(i))                  # a fresh whole tensor, as full_tensor() makes
            alive.append(weakref.ref(t))
            most = max(most, sum(r() is not None for r in alive))
            yield f"t{i}", t
            del t
    one_by_one = tensors_sha256(gathered())
    assert most == 1
    assert one_by_one == tensors_sha256({f"t{i}": torch.full((256,), float(i)) for i in range(4)})
    model = _Method(1).model
    assert tensors_sha256(whole_parameters(model)) == tensors_sha256(full_parameters(model)) == params_sha256(model)


class _Bf16Method:
    """A bf16 model trained through FirstOrderTrainer, whose AdamW steps fp32 masters made at the first gradient."""

    def __init__(self) -> None:
        from hizfo.core.methods import FirstOrderTrainer
        torch.manual_seed(0)
        self.model = nn.Linear(3, 2).to(torch.bfloat16)
        self.trainer = FirstOrderTrainer(self.model, {"weight", "bias"}, 1e-2, 0.0, "constant", 10)

    def eval_model(self) -> nn.Module:
        return self.model

    def state_dict(self) -> dict:
        return {"fo": self.trainer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.trainer.load_state_dict(state["fo"])

    def step(self) -> None:
        self.model(torch.ones(4, 3, dtype=torch.bfloat16)).float().pow(2).mean().backward()
        self.trainer.step()


def test_a_bf16_runs_fp32_masters_resume_through_the_distributed_layout(tmp_path: Path):
    """The masters exist only after a tensor's first gradient; a resumed run's are placeholders until the optimizer
    priming makes them, so DCP has tensors to load the saved masters into (else: 'no place for' the masters)."""
    saved = _Bf16Method()
    for _ in range(2):
        saved.step()
    (tmp_path / "step-2").mkdir()
    write_shards(tmp_path / "step-2", saved, Meters(), None, World())
    write_state(tmp_path / "step-2", saved, LoopState(step=2), "hash", "periodic", World())
    resumed = _Bf16Method()
    read_distributed(tmp_path / "step-2", resumed, LoopState(), Meters(), None, "hash", tmp_path, World())
    for a, b in zip(saved.trainer.masters.masters, resumed.trainer.masters.masters):
        assert torch.equal(a, b) and a.dtype == torch.float32
    saved.step()
    resumed.step()                                              # the next step is the uninterrupted run's
    for a, b in zip(saved.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


def test_masters_made_at_once_by_several_processes_resume_in_one(tmp_path: Path):
    """Several processes make every bf16 tensor's master at once (FSDP2 shards), one process a tensor's at its first
    gradient: a checkpoint holding the master of a tensor that never stepped (GreenTrainer's unselected candidate)
    resumes in one process, whose master of it is still a placeholder (before: 'no place for' that master)."""
    saved = _Bf16Method()
    saved.trainer.masters.materialize(saved.trainer.masters.masters)         # as under FSDP2: all at once
    saved.model.bias.requires_grad_(False)                                   # the bias never steps
    saved.step()
    (tmp_path / "step-1").mkdir()
    write_shards(tmp_path / "step-1", saved, Meters(), None, World())
    write_state(tmp_path / "step-1", saved, LoopState(step=1), "hash", "periodic", World(size=2))
    resumed = _Bf16Method()
    resumed.model.bias.requires_grad_(False)
    read_distributed(tmp_path / "step-1", resumed, LoopState(), Meters(), None, "hash", tmp_path, World())
    for a, b in zip(saved.trainer.masters.masters, resumed.trainer.masters.masters):
        assert torch.equal(a, b) and b.dtype == torch.float32 and b.numel() > 0
