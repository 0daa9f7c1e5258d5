"""Many processes, one run: the process group a ``torchrun`` launch sets up, each rank's slice of a global batch, and
the one all-reduce of the loss scalars a data-parallel zeroth-order step needs (docs/design.md, "Many processes").

One process (no ``torchrun``, ``WORLD_SIZE`` unset or 1) is the default and touches nothing here: every function is
then the identity, so a one-process run computes exactly what it did before this module existed.

Under ``torchrun --nproc_per_node N run.py ...``: ``task.batch_size`` stays the *global* batch; rank r takes the
r-th contiguous slice of every global batch, in the one-process order (``rank_slice``). The loss a step reports is
the global batch's mean token loss, Σ_r loss_sum_r / Σ_r tokens_r, from one all-reduce of a few scalars per step
(``global_means``), so every rank computes the same projected gradient and applies the same in-place ZO update: the
replicated weights stay identical without any weight traffic. The noise z(s) depends only on (step seed, tensor,
element) (hizfo/core/zo.py), never on the rank.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist

from hizfo.errors import ConfigError

BACKENDS = ("auto", "gloo", "nccl")


@dataclass(frozen=True)
class World:
    """This process's place in the run: its rank, how many processes, the backend (``none`` in one process)."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_rank() -> int:
    """This process's rank as ``torchrun`` announced it in ``RANK`` (0 without a launcher): before any group exists,
    it says which process prints a bad config's one line."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def launched_world_size() -> int:
    """The world size ``torchrun`` (or Slurm through it) announced in ``WORLD_SIZE``; 1 without a launcher."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(value)
    except ValueError:
        raise ConfigError(f"WORLD_SIZE: '{value}' is not a whole number (set by torchrun; unset it for one process)")
    if size < 1:
        raise ConfigError(f"WORLD_SIZE: must be >= 1, got {size}")
    return size


def pick_backend(choice: str, device_type: str) -> str:
    """``auto``: nccl on CUDA, gloo on CPU; nccl without CUDA is refused in one line."""
    if choice not in BACKENDS:
        raise ConfigError(f"backend: '{choice}' is not one of {', '.join(BACKENDS)}")
    if choice == "auto":
        return "nccl" if device_type == "cuda" else "gloo"
    if choice == "nccl" and not torch.cuda.is_available():
        raise ConfigError("backend: nccl needs CUDA GPUs and this machine has none; use "
                          "backend=gloo (or auto)")
    return choice


def current() -> World:
    """The world this process runs in now (one process when no group is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(rank=dist.get_rank(), size=dist.get_world_size(),
                 local_rank=int(os.environ.get("LOCAL_RANK", "0")), backend=dist.get_backend())


def init(backend: str) -> World:
    """Join the process group ``torchrun`` describes (idempotent); one process: nothing to join."""
    if launched_world_size() == 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return current()


def shutdown() -> None:
    """Leave the process group (every rank at the end of a run, also after a failure)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_slice(indices: Sequence[int], world: World) -> list[int]:
    """Rank r's contiguous slice of one global batch: ``ceil(n / size)`` rows each, in order; a rank past the end of
    a short last batch gets none (it still takes part in the step's all-reduce, with zero tokens)."""
    if world.size == 1:
        return list(indices)
    per_rank = -(-len(indices) // world.size)
    return list(indices[world.rank * per_rank:(world.rank + 1) * per_rank])


def check_global_batch(batch_size: int, world: World) -> None:
    """The global batch must split evenly over the ranks (one line, before any model loads)."""
    if batch_size % world.size:
        raise ConfigError(f"task.batch_size: the global batch {batch_size} does not split over {world.size} "
                          f"processes; use a multiple of {world.size} (task.batch_size is the global batch)")


def target_tokens(batch: dict[str, torch.Tensor]) -> int:
    """How many tokens a causal-LM loss averages over in this batch (labels shifted by one, -100 left out)."""
    return int((batch["labels"][:, 1:] != -100).sum())


def global_means(sums: Sequence[float], tokens: int, world: World) -> list[float]:
    """Each of ``sums`` (a loss summed over this rank's target tokens) as the global batch's mean token loss, from
    ONE all-reduce of ``len(sums) + 1`` scalars in float64 (the summation order over ranks is the only difference
    from one process)."""
    packed = torch.tensor([*sums, float(tokens)], dtype=torch.float64)
    if world.backend == "nccl":
        packed = packed.to(torch.device("cuda", world.local_rank))
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    *total_sums, total_tokens = packed.tolist()
    if total_tokens <= 0:
        raise ConfigError("task: a global batch has no target tokens on any rank")
    return [s / total_tokens for s in total_sums]


def data_parallel_losses(losses: Sequence[float], batch: dict[str, torch.Tensor]) -> list[float]:
    """This rank's mean token losses on its slice of the global batch, as the global batch's mean token losses
    (one all-reduce for all of them); in one process, ``losses`` unchanged."""
    world = current()
    if world.size == 1:
        return list(losses)
    tokens = target_tokens(batch)
    return global_means([loss * tokens for loss in losses], tokens, world)


def agree(error: Optional[Exception]) -> None:
    """Rank 0's verdict on a step only it takes (the run's lock), sent to every rank: rank 0 raises ``error``, the
    others raise a ConfigError that rank 0 has already reported (so they exit without a second line)."""
    world = current()
    if world.size == 1:
        if error is not None:
            raise error
        return
    message = [None if error is None else str(error)]
    dist.broadcast_object_list(message, src=0)
    if world.is_main and error is not None:
        raise error
    if message[0] is not None:
        quiet = ConfigError(message[0])
        quiet.reported = True                              # type: ignore[attr-defined]
        raise quiet


def rank_device(device: torch.device, world: World) -> torch.device:
    """Each rank's own GPU (``cuda:LOCAL_RANK``) under several processes on CUDA; else ``device``."""
    if world.size == 1 or device.type != "cuda":
        return device
    torch.cuda.set_device(world.local_rank)
    return torch.device("cuda", world.local_rank)


def world_provenance(world: World, peak_memory_bytes: int) -> dict[str, Any]:
    """What a record's provenance says about the processes: world size, backend, every rank's peak memory (the
    record's peak is their maximum). Every rank must call it (it gathers)."""
    if world.size == 1:
        return {"world_size": 1, "backend": "none"}
    peaks: list[Any] = [None] * world.size
    dist.all_gather_object(peaks, int(peak_memory_bytes))
    return {"world_size": world.size, "backend": world.backend, "rank_peak_memory_bytes": [int(b) for b in peaks]}
