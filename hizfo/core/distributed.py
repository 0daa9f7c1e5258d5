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

import atexit
import copy
import gc
import os
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from hizfo.errors import ConfigError, PeerFailed

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


def slurm_rendezvous(environ: Optional[dict[str, str]] = None) -> dict[str, str]:
    """torch.distributed's ``env://`` variables from a Slurm step of several tasks (``srun``, as submitit runs a job
    with ``tasks_per_node`` > 1): rank, world size and local rank from Slurm's, the first node of the step as the
    master, a port from the job id. Empty outside such a step, or when a launcher (torchrun) already set them."""
    env = os.environ if environ is None else environ
    tasks = env.get("SLURM_STEP_NUM_TASKS")
    if "WORLD_SIZE" in env or tasks is None or not tasks.isdigit() or int(tasks) < 2:
        return {}
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "")
    job = int(env.get("SLURM_JOB_ID", "0") or 0)
    return {"RANK": env.get("SLURM_PROCID", "0"), "WORLD_SIZE": tasks, "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
            "MASTER_ADDR": env.get("MASTER_ADDR") or first_host(nodes),
            "MASTER_PORT": env.get("MASTER_PORT") or str(20000 + job % 20000)}


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: ``gpu[07-09,12],cpu1`` -> ``gpu07`` (Slurm's own compressed form)."""
    head = nodelist.split(",")[0] if "[" not in nodelist.split(",")[0] else nodelist[:nodelist.index("]") + 1]
    if "[" not in head:
        return head or "127.0.0.1"
    prefix, ranges = head[:head.index("[")], head[head.index("[") + 1:-1]
    return prefix + ranges.split(",")[0].split("-")[0]


def launched_rank() -> int:
    """This process's rank as ``torchrun`` announced it in ``RANK`` (0 without a launcher): before any group exists,
    it says which process prints a bad config's one line."""
    try:
        return int(os.environ.get("RANK") or slurm_rendezvous().get("RANK", "0"))
    except ValueError:
        return 0


REPORT_WAIT_S = 20.0


def say_from_rank_0(line: str) -> None:
    """An error every rank finds alike (a bad config), said once: rank 0 prints ``line``; any other rank waits
    before it exits, since torchrun stops every other rank once one exits and rank 0 may not have printed yet (a
    two-process test lost the line now and then on a busy box). Rank 0's exit ends the wait (torchrun's SIGTERM);
    without torchrun (srun) the rank exits after ``REPORT_WAIT_S``."""
    if launched_rank() == 0:
        print(line, file=sys.stderr, flush=True)
    elif launched_world_size() > 1:
        time.sleep(REPORT_WAIT_S)


def launched_world_size() -> int:
    """The world size ``torchrun`` (or Slurm through it) announced in ``WORLD_SIZE``; 1 without a launcher."""
    value = os.environ.get("WORLD_SIZE") or slurm_rendezvous().get("WORLD_SIZE", "1")
    try:
        size = int(value)
    except ValueError:
        raise ConfigError(f"WORLD_SIZE: '{value}' is not a whole number (set by torchrun; unset it for one process)")
    if size < 1:
        raise ConfigError(f"WORLD_SIZE: must be >= 1, got {size}")
    return size


def pick_backend(choice: str, device_type: str) -> str:
    """``auto``: nccl on CUDA, gloo on CPU. Refused in one line: nccl without CUDA, and, under several processes,
    a backend that does not match the device (FSDP2's mesh is a CUDA one for nccl, a CPU one for gloo)."""
    if choice not in BACKENDS:
        raise ConfigError(f"backend: '{choice}' is not one of {', '.join(BACKENDS)}")
    if choice == "auto":
        return "nccl" if device_type == "cuda" else "gloo"
    if choice == "nccl" and not torch.cuda.is_available():
        raise ConfigError("backend: nccl needs CUDA GPUs and this machine has none; use "
                          "backend=gloo (or auto)")
    if launched_world_size() > 1 and (choice == "nccl") != (device_type == "cuda"):
        raise ConfigError(f"backend: {choice} with device {device_type} under several processes: the sharded "
                          f"model would sit on one kind of device and its batches on another; use backend=auto "
                          f"(nccl on CUDA, gloo on CPU)")
    return choice


def current() -> World:
    """The world this process runs in now (one process when no group is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(rank=dist.get_rank(), size=dist.get_world_size(),
                 local_rank=int(os.environ.get("LOCAL_RANK", "0")), backend=str(dist.get_backend()))


def init(backend: str) -> World:
    """Join the process group ``torchrun`` describes, once per process: the runs of a Hydra sweep under torchrun
    (one process runs every job) share it, and it is left at exit (``leave``); one process: nothing to join."""
    if launched_world_size() == 1:
        return World()
    os.environ.update(slurm_rendezvous())              # a Slurm step of several tasks: the env:// variables
    if not dist.is_initialized():
        device = group_device(backend)
        if device is not None:                         # before the first collective (agree's object broadcast)
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, device_id=device)
        atexit.register(leave)
    elif dist.get_backend() != backend:
        raise ConfigError(f"backend: this process's group is {dist.get_backend()} (an earlier job of the sweep); "
                          f"a sweep under torchrun keeps one backend, launch {backend} on its own")
    return current()


def group_device(backend: str) -> Optional[torch.device]:
    """nccl's GPU for this rank, ``cuda:LOCAL_RANK`` (else every rank's object broadcasts use GPU 0); gloo: None."""
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if backend == "nccl" else None


def end_run(finished: bool = False) -> None:
    """A run's end on every rank, also after a failure: after a ``finished`` run the ranks meet, so none goes on while
    another still speaks to it; each collects its cyclic garbage (the caller drops the model first), where FSDP2's
    modules hold the group and their collectives' work: left to the interpreter's teardown, they aborted a rank
    (``terminate called without an active exception``) now and then. The group stays for a sweep's next job."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if finished:
        try:
            dist.barrier()
        except RuntimeError:           # a peer that failed after the last collective: its own exit status says so
            pass
    gc.collect()


def leave() -> None:
    """Leave the process group (at exit, before the interpreter's teardown; idempotent)."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def rank_slice(indices: Sequence[int], world: World) -> list[int]:
    """Rank r's contiguous slice of one global batch: ``ceil(n / size)`` rows each, in order; a rank past the end of
    a short last batch gets none (it still takes part in the step's all-reduce, with zero tokens)."""
    if world.size == 1:
        return list(indices)
    per_rank = -(-len(indices) // world.size)
    return list(indices[world.rank * per_rank:(world.rank + 1) * per_rank])


def rows_of_rank(batch: dict[str, Any]) -> dict[str, Any]:
    """This rank's rows (``rank_slice``'s) of one whole global batch, every tensor cut alike; one process: ``batch``."""
    world = current()
    if world.size == 1:
        return batch
    rows = rank_slice(range(int(batch["input_ids"].shape[0])), world)
    cut = slice(rows[0], rows[-1] + 1) if rows else slice(0, 0)
    return {k: v[cut] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def profiles_on_shards(asked: bool, world_size: int, method: str, low_precision_weights: bool) -> bool:
    """Whether a Hi-ZFO / GreenTrainer profile runs on FSDP2's shards (the run key ``profile_shards``): asked for and
    several processes, except bf16 Hi-ZFO, whose Θ_ZO stays whole on every rank, which only the partition names, so
    it profiles the whole model and shards after. The one rule the methods and the planner (core/memory.py) follow."""
    return asked and world_size > 1 and not (method == "hizfo" and low_precision_weights)


def check_global_batch(batch_size: int, world: World) -> None:
    """The global batch must split evenly over the ranks (one line, before any model loads)."""
    if batch_size % world.size:
        raise ConfigError(f"task.batch_size: the global batch {batch_size} does not split over {world.size} "
                          f"processes; use a multiple of {world.size} (task.batch_size is the global batch)")


def target_tokens(batch: dict[str, torch.Tensor]) -> int:
    """How many tokens a causal-LM loss averages over in this batch (labels shifted by one, -100 left out)."""
    return int((batch["labels"][:, 1:] != -100).sum())


def summed(values: Sequence[float], world: World) -> list[float]:
    """Each of ``values`` summed over the ranks: one all-reduce, in float64."""
    packed = torch.tensor(list(values), dtype=torch.float64)
    if world.backend == "nccl":
        packed = packed.to(torch.device("cuda", world.local_rank))
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return packed.tolist()


def maxed(values: torch.Tensor) -> torch.Tensor:
    """``values`` (a tensor on this rank's device) element-wise maxed over the ranks: one all-reduce."""
    if current().size > 1:
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def global_means(sums: Sequence[float], tokens: int, world: World) -> list[float]:
    """Each of ``sums`` (a loss summed over this rank's target tokens) as the global batch's mean token loss, from
    ONE all-reduce of ``len(sums) + 1`` scalars in float64 (the summation order over ranks is the only difference
    from one process)."""
    *total_sums, total_tokens = summed([*sums, float(tokens)], world)
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


def lockstep(model: nn.Module) -> bool:
    """Whether ``model``'s forwards are collectives every rank must run alike: FSDP2 blocks, several processes."""
    from torch.distributed.fsdp import FSDPModule
    return current().size > 1 and any(isinstance(m, FSDPModule) for m in model.modules())


def my_share(items: list[Any], split: World, even: bool = False) -> list[Any]:
    """This rank's items r, r + N, r + 2N, ... of a ``split`` over N ranks (all of them for a split over one);
    ``even``: padded with None to ceil(len / N), so every rank takes as many turns (a None turn runs a stand-in)."""
    if split.size == 1:
        return items
    share = items[split.rank::split.size]
    return share + [None] * (-(-len(items) // split.size) - len(share)) if even else share


def gather_to_main(items: list[Any], split: World) -> list[Any]:
    """Every rank's ``items`` of a ``split`` joined on rank 0 (picklable objects, rank order); [] on the other ranks.
    A split over one: ``items``, on every rank."""
    if split.size == 1:
        return items
    parts: Optional[list[Any]] = [None] * split.size if split.is_main else None
    dist.gather_object(items, parts, dst=0)
    return [item for part in parts for item in part] if parts is not None else []


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


def from_main(value: Any) -> Any:
    """Rank 0's ``value`` (picklable) on every rank; in one process, ``value``."""
    if current().size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree_all(error: Optional[Exception]) -> None:
    """Any rank's failure of a step every rank takes (writing its part of a checkpoint), raised on every rank: a
    failed rank raises its own error; the others ``PeerFailed`` naming it (a run failure: rank 0 leaves a failed
    record), printed by rank 0 only."""
    world = current()
    if world.size == 1 or not dist.is_initialized():
        if error is not None:
            raise error
        return
    errors: list[Any] = [None] * world.size
    dist.all_gather_object(errors, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [rank for rank, e in enumerate(errors) if e is not None]
    if failed:
        peer = PeerFailed(f"rank {failed[0]} failed: {errors[failed[0]]}")
        peer.reported = not world.is_main                     # type: ignore[attr-defined]
        raise peer


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


# ---------------------------------------------------------------------------------------------------
# first-order parts: FSDP2 (torch.distributed.fsdp.fully_shard), one unit per decoder block


def shard(model: nn.Module, replicate: Sequence[torch.Tensor] = ()) -> nn.Module:
    """Under several processes, shard ``model`` with FSDP2: each decoder block one unit, then the rest (embeddings,
    final norm, head) under the root; each rank holds 1/size of every tensor (a DTensor) and its optimizer state
    follows. The blocks are all-gathered for their forward and backward and freed after; gradients are
    reduce-scattered as an average over ranks (``data_parallel_loss`` scales the loss so that average is the global
    batch's gradient). ``replicate``: tensors FSDP leaves alone, whole on every rank (a zeroth-order part, which
    every rank updates alike from the all-reduced losses). No MixedPrecisionPolicy: bf16-mixed stays autocast over
    the fp32 shards, as in one process (docs/design.md, "Many processes"). One process: ``model`` unchanged."""
    world = current()
    if world.size == 1:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard
    if isinstance(model, FSDPModule):                      # sharded already (a profile that ran on the shards)
        return model
    from hizfo.core.models import decoder_layers
    device_type = "cuda" if world.backend == "nccl" else "cpu"
    mesh = init_device_mesh(device_type, (world.size,))
    ignored = {p for p in replicate if isinstance(p, nn.Parameter)} or None
    for block in decoder_layers(model):
        fully_shard(block, mesh=mesh, ignored_params=ignored)
    # FSDP2 warns (each rank, each run) that a block returns a view, lest an in-place op on it skip its hook: none
    # here does (2 processes take one process's steps, every method: tests/distributed/test_data_parallel.py)
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor", category=UserWarning)
    # the root too reshards after every forward (FSDP2 keeps it whole, expecting a backward): a forward without
    # backward (a ZO stream) would leave stale whole copies, read by the next forward after the optimizer step
    fully_shard(model, mesh=mesh, ignored_params=ignored, reshard_after_forward=True)
    return model


def data_parallel_loss(loss: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, float]:
    """The loss to call ``backward`` on and the global batch's mean token loss, from this rank's mean token loss on
    its slice. Several processes: ``loss · tokens · size / Σ tokens``, whose gradient FSDP averages over the ranks
    into the global batch's gradient (one all-reduce of two scalars). One process: ``loss`` and its value."""
    world = current()
    if world.size == 1:
        return loss, float(loss.detach())
    tokens = target_tokens(batch)
    total_sum, total_tokens = summed([float(loss.detach()) * tokens, float(tokens)], world)
    return loss * (tokens * world.size / total_tokens), total_sum / total_tokens


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded (DTensor) parameter; any other tensor as it is."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def whole_parameters(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter once (tied weights under their first name), detached and whole, one at a time: a sharded
    one is gathered when its turn comes, so a consumer that drops each before the next holds one whole tensor
    beyond the shards, not the whole model (a collective: every rank must iterate to the end, in the same order)."""
    for name, p in model.named_parameters(remove_duplicate=True):
        yield name, (p.detach().full_tensor() if isinstance(p, DTensor) else p.detach())


def full_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """``whole_parameters`` all at once: the whole model on every rank (tests and small models only)."""
    return dict(whole_parameters(model))


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """The root FSDP2 unit of ``model`` (embeddings, final norm, head, a prefix's encoder: what peft's ``generate``
    may call outside the root's hooks) all-gathered and kept whole while evaluation runs; the decoder blocks stay
    sharded and all-gather in each forward (``lockstep``). Costs the root whole plus two blocks on every rank, not
    the whole model. Not sharded: nothing to do."""
    from torch.distributed.fsdp import FSDPModule
    root = next((m for m in model.modules() if isinstance(m, FSDPModule)), None)
    if root is None:
        yield
        return
    root.set_reshard_after_forward(False, recurse=False)    # the root only (FSDP2 recurses by default)
    root.unshard()
    try:
        yield
    finally:
        root.reshard()
        root.set_reshard_after_forward(True, recurse=False)


def skeleton(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s module tree with every parameter and buffer on the meta device (no memory), taken
    before ``shard``: ``whole_copy`` fills it when a computation needs the model whole and outside FSDP, and the cost
    model traces its forward where a profile runs on the shards (hizfo/core/partition.py, ``partition_model``)."""
    memo: dict[int, Any] = {id(b): torch.empty_like(b, device="meta") for b in model.buffers()}
    memo.update({id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
                 for p in model.parameters()})
    return copy.deepcopy(model, memo)                     # tied weights stay tied: one meta tensor each


def whole_copy(shape: nn.Module, model: nn.Module) -> nn.Module:
    """``shape`` (a ``skeleton`` of ``model``) holding ``model``'s weights whole and in its own storage (sharded ones
    gathered: a collective, every rank calls it alike) and sharing its buffers: a plain module outside FSDP, whose
    weights a profile may move in place. Costs the whole model on every rank until the caller drops it."""
    live = dict(model.named_parameters(remove_duplicate=True))
    weights = {name: (p.detach().full_tensor() if isinstance(p, DTensor) else p.detach().clone())
               for name, p in live.items()}
    buffers = dict(model.named_buffers())
    memo: dict[int, Any] = {id(b): buffers[name] for name, b in shape.named_buffers()}
    memo.update({id(p): nn.Parameter(weights[name], requires_grad=live[name].requires_grad)
                 for name, p in shape.named_parameters(remove_duplicate=True)})
    whole = copy.deepcopy(shape, memo)
    whole.train(model.training)
    return whole
