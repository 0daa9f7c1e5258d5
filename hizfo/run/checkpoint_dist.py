"""A checkpoint several processes write together, through ``torch.distributed.checkpoint`` (DCP): every rank its shard.

    dcp/            DCP's files: ``.metadata`` and one ``__<rank>_0.distcp`` per rank, holding the model's parameters
                    (FSDP2's DTensor shards; a tensor every rank holds whole, e.g. a bf16 ZO part, once) and the
                    tensors of the method's ``state_dict()`` (AdamW's moments sharded like their parameters)
    method.pt       the rest of the method's state (schedulers, counters, a selection), tensors as keys into dcp/
    rank-<r>.pt     rank r's RNG states (torch, numpy, python, the ZO seed generator) and meters
    state.json      format, config hash, loop position, the world size that wrote it (rank 0)
    manifest.json   size and sha256 of every file above, written last by rank 0, once every rank has written

Same world size: each rank reads back its own shard and RNG states, so the resumed run is bit-exact, as in one
process. Another world size: DCP reshards (each rank reads the rows it now holds, from whichever files hold them)
and every rank takes rank 0's RNG states; the parameters and optimizer state come back bit for bit, and the steps
that follow differ from an uninterrupted run only as an N-process run differs from a one-process one (summation
order; tests/distributed/test_checkpoint_dp.py). The checkpoint folder must be on a file system every rank sees
(as ``results_dir`` is, for the record).

The policy (when, where, which one) stays the checkpointer's (``hizfo.run.checkpoint``); the single-process layout
is ``hizfo.run.checkpoint_files``'s.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from hizfo.core.distributed import World
from hizfo.core.precision import MasterWeights
from hizfo.errors import ConfigError, one_line
from hizfo.run.checkpoint_files import (FORMAT_VERSION, capture_rng, checked_state, fsync_dir, manifest_files,
                                        restore_loop, restore_rng, unique_parameters, write_manifest)

DCP_DIR = "dcp"
LAYOUT = "distributed"


def is_distributed(path: Path) -> bool:
    """Whether the checkpoint at ``path`` was written by several processes (``dcp/`` present)."""
    return (path / DCP_DIR).is_dir()


def _parts(method: Any, kind: type) -> list[Any]:
    """The objects of ``kind`` a method holds, on itself or on one of its parts (a trainer's), each once."""
    found: list[Any] = []
    for value in vars(method).values():
        for candidate in [value, *(vars(value).values() if hasattr(value, "__dict__") else ())]:
            if isinstance(candidate, kind) and all(candidate is not f for f in found):
                found.append(candidate)
    return found


def torch_optimizers(method: Any) -> list[torch.optim.Optimizer]:
    """The torch optimizers a method holds, on itself or on one of its parts (a trainer's ``optimizer``)."""
    return _parts(method, torch.optim.Optimizer)


def stepped_params(method: Any) -> list[list[int]]:
    """For each of the method's optimizers, the indices (``state_dict()`` numbering) of the parameters that have
    state: those a resume must give state to before DCP loads it (GreenTrainer's optimizer, say, holds every
    tensor, but only the selected ones have stepped)."""
    return [sorted(int(k) for k in optimizer.state_dict()["state"]) for optimizer in torch_optimizers(method)]


@torch.no_grad()
def prime_optimizers(method: Any, stepped: Optional[list[list[int]]] = None) -> None:
    """Give the optimizers' parameters that had state when the checkpoint was written (``stepped``, from
    ``stepped_params``; None: all of them) that state now (zero moments, through one step at lr 0 on zero
    gradients), so that DCP, which loads in place, has tensors of the right shards to load the saved state into.
    The parameters do not move (lr 0); the state is overwritten by the checkpoint's, and a parameter that had none
    gets none."""
    for position, optimizer in enumerate(torch_optimizers(method)):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        wanted = set(range(len(params))) if stepped is None else set(stepped[position])
        primed = [p for index, p in enumerate(params) if index in wanted and p not in optimizer.state]
        if not primed:
            continue
        for masters in _parts(method, MasterWeights):      # precision=bf16: fp32 masters are made at a tensor's
            masters.materialize(primed)                     # first gradient; these had one, so they exist now
        lrs = [group["lr"] for group in optimizer.param_groups]
        for p in primed:
            p.grad = torch.zeros_like(p)
        for group in optimizer.param_groups:
            group["lr"] = 0.0
        optimizer.step()
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
        for p in primed:
            p.grad = None


def split_tensors(state: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """``state`` (nested dicts, lists, tuples) with every tensor replaced by ``{"__dcp__": key}``, and those tensors
    by key (their path, '/'-joined). The skeleton goes to ``method.pt`` whole; DCP takes only the tensors, so a
    method whose other state changes shape over a run (a selection made later, say) still loads."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(item: Any, path: tuple[str, ...]) -> Any:
        if isinstance(item, torch.Tensor):
            key = "/".join(path)
            tensors[key] = item
            return {"__dcp__": key}
        if isinstance(item, dict):
            return {k: walk(v, (*path, str(k))) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return type(item)(walk(v, (*path, str(i))) for i, v in enumerate(item))
        return item
    return walk(state, ()), tensors


def join_tensors(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """``split_tensors`` undone."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {"__dcp__"}:
            return tensors[skeleton["__dcp__"]]
        return {k: join_tensors(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, (list, tuple)):
        return type(skeleton)(join_tensors(v, tensors) for v in skeleton)
    return skeleton


def join_keys(skeleton: Any) -> list[str]:
    """The tensor keys a ``split_tensors`` skeleton refers to."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {"__dcp__"}:
            return [skeleton["__dcp__"]]
        return [key for v in skeleton.values() for key in join_keys(v)]
    if isinstance(skeleton, (list, tuple)):
        return [key for v in skeleton for key in join_keys(v)]
    return []


def own_failure(exc: CheckpointException, rank: int) -> Optional[Exception]:
    """DCP hands one rank's failure to every rank, as ``CheckpointException`` (a BaseException, which no
    ``except Exception`` sees): this rank's own exception where it is the one that failed, else None (the rank that
    failed then names itself to the others: ``distributed.agree_all``)."""
    own = exc.failures.get(rank)
    if own is None:
        return None
    error = own[0]
    return error if isinstance(error, Exception) else RuntimeError(one_line(error))


def write_shards(folder: Path, method: Any, meters: Any, zo_seeds: Optional[torch.Generator], world: World) -> None:
    """This rank's part of a checkpoint in ``folder`` (a temp directory rank 0 made): its DCP shard of the model's
    unique parameters and of the method's tensors (a collective: every rank calls it), then its RNG states and
    meters; rank 0 also the method state's skeleton (``method.pt``)."""
    skeleton, tensors = split_tensors(method.state_dict())
    dcp.save({"model": unique_parameters(method.eval_model()), "method": tensors}, checkpoint_id=folder / DCP_DIR)
    if world.is_main:
        torch.save(skeleton, folder / "method.pt")
    rng, scalars = capture_rng(zo_seeds)
    torch.save({"rng": rng, "rng_scalars": json.dumps(scalars), "meters": json.dumps(meters.state_dict())},
               folder / f"rank-{world.rank}.pt")


def write_state(folder: Path, method: Any, state: Any, config_hash: str, reason: str, world: World) -> None:
    """Rank 0, once every rank has written its part: ``state.json``, then the manifest over every file (last)."""
    import dataclasses
    info = {"format": FORMAT_VERSION, "config_hash": config_hash, "step": state.step, "reason": reason,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "world_size": world.size,
            "loop": dataclasses.asdict(state), "stepped": stepped_params(method)}
    (folder / "state.json").write_text(json.dumps(info))
    write_manifest(folder, manifest_files(folder), layout=LAYOUT)
    fsync_dir(folder)


def check_readable(path: Path, config_hash: str, run_folder: Path) -> None:
    """Rank 0, choosing the checkpoint to resume: its small files parse and DCP's metadata reads (the shards'
    bytes are covered by the manifest's checksums). Raises what a read would; ``ConfigError`` for another config's."""
    info = checked_state(path, config_hash, run_folder)
    if not isinstance(info.get("loop"), dict) or not isinstance(info.get("world_size"), int):
        raise ValueError("state.json has no 'loop' object or 'world_size'")
    for rank in range(info["world_size"]):
        own = torch.load(path / f"rank-{rank}.pt", map_location="cpu", weights_only=True)
        json.loads(own["rng_scalars"]), json.loads(own["meters"])
    torch.load(path / "method.pt", map_location="cpu", weights_only=True)
    dcp.FileSystemReader(path / DCP_DIR).read_metadata()


def check_shapes(path: Path, live: dict[str, torch.Tensor], saved_world: int, world: World) -> None:
    """Every rank, before DCP loads: each method tensor the checkpoint holds has the (global) shape of the tensor
    this run loads it into. They differ when the run made another selection than the one that wrote it (a profile
    on the shards at another world size, ``profile_shards``): one line naming the world size to resume at, where
    DCP would fail with a traceback."""
    stored = dcp.FileSystemReader(path / DCP_DIR).read_metadata().state_dict_metadata
    for key, tensor in live.items():
        size = getattr(stored.get(f"method.{key}"), "size", None)
        if size is not None and tuple(size) != tuple(tensor.shape):
            where = (f"it was written by {saved_world} processes and this run has {world.size}, so its selection "
                     f"may differ (a profile on the shards): resume it with {saved_world}"
                     if saved_world != world.size else "resume it with the config that wrote it")
            refusal = ConfigError(f"checkpoint: {path} holds '{key}' of shape {tuple(size)}, this run's has "
                                  f"{tuple(tensor.shape)}; {where}, or remove it to start afresh")
            refusal.reported = not world.is_main                  # type: ignore[attr-defined]
            raise refusal


def _unmade_masters(path: Path, keys: list[str]) -> dict[str, torch.Tensor]:
    """precision=bf16: fp32 masters the checkpoint holds that this run has not made (several processes make every
    master at once, one process a tensor's at its first gradient, so a GreenTrainer candidate never selected has
    one only in the former): a tensor of the saved shape for DCP to fill, which ``MasterWeights.load_state_dict``
    then takes as the master (it equals its tensor in fp32, as the master one process would make)."""
    keys = [key for key in keys if "masters" in key.split("/")]
    if not keys:
        return {}
    stored = dcp.FileSystemReader(path / DCP_DIR).read_metadata().state_dict_metadata
    return {key: torch.empty(tuple(stored[f"method.{key}"].size), dtype=torch.float32)
            for key in keys if f"method.{key}" in stored}


def read_distributed(path: Path, method: Any, state: Any, meters: Any, zo_seeds: Optional[torch.Generator],
                     config_hash: str, run_folder: Path, world: World) -> None:
    """Every rank: the method's parameters and state from the DCP files (resharded to this world size), this rank's
    RNG states and meters (rank 0's when the world size changed), and the loop's position. One process reads it
    too (no process group: DCP reads every shard itself)."""
    info = checked_state(path, config_hash, run_folder)
    skeleton = torch.load(path / "method.pt", map_location="cpu", weights_only=True)
    prime_optimizers(method, info.get("stepped"))
    live = split_tensors(method.state_dict())[1]           # tensors of this run's shards to load into, in place
    wanted = join_keys(skeleton)
    live.update(_unmade_masters(path, [key for key in wanted if key not in live]))
    missing = [key for key in wanted if key not in live]
    if missing:
        raise ConfigError(f"checkpoint: {path} holds method state this run has no place for ({missing[:3]})")
    states = {"model": unique_parameters(method.eval_model()), "method": {key: live[key] for key in wanted}}
    check_shapes(path, states["method"], info["world_size"], world)
    try:
        dcp.load(states, checkpoint_id=path / DCP_DIR)
    except CheckpointException as exc:                    # every rank gets it: each fails alike, rank 0 records
        rank, (error, _) = next(iter(sorted(exc.failures.items(), key=lambda kv: kv[0])))
        raise RuntimeError(f"checkpoint: {path}: rank {rank} could not read it: {one_line(error)}") from None
    method.load_state_dict(join_tensors(skeleton, states["method"]))
    rank = world.rank if info.get("world_size") == world.size else 0
    own = torch.load(path / f"rank-{rank}.pt", map_location="cpu", weights_only=True)
    restore_rng(own["rng"], json.loads(own["rng_scalars"]), zo_seeds)
    meters.load_state_dict(json.loads(own["meters"]))
    restore_loop(state, info["loop"])
