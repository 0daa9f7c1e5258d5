"""A checkpoint several processes write together, through ``torch.distributed.checkpoint`` (DCP): every rank its shard.

    dcp/            DCP's files: ``.metadata`` and one ``__<rank>_0.distcp`` per rank, holding the model's parameters
                    (FSDP2's DTensor shards; a tensor every rank holds whole, e.g. a replicated ZO part, once) and
                    the method's ``state_dict()`` (AdamW's moments sharded like their parameters; schedulers, counters)
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

from hizfo.core.distributed import World
from hizfo.run.checkpoint_files import (FORMAT_VERSION, capture_rng, checked_state, fsync_dir, manifest_files,
                                        restore_loop, restore_rng, unique_parameters, write_manifest)

DCP_DIR = "dcp"
LAYOUT = "distributed"


def is_distributed(path: Path) -> bool:
    """Whether the checkpoint at ``path`` was written by several processes (``dcp/`` present)."""
    return (path / DCP_DIR).is_dir()


def torch_optimizers(method: Any) -> list[torch.optim.Optimizer]:
    """The torch optimizers a method holds, on itself or on one of its parts (a trainer's ``optimizer``)."""
    found: list[torch.optim.Optimizer] = []
    for value in vars(method).values():
        for candidate in [value, *(vars(value).values() if hasattr(value, "__dict__") else ())]:
            if isinstance(candidate, torch.optim.Optimizer) and all(candidate is not f for f in found):
                found.append(candidate)
    return found


@torch.no_grad()
def prime_optimizers(method: Any) -> None:
    """Give every optimizer that has not stepped yet its state (zero moments, through one step at lr 0 on zero
    gradients), so that DCP, which loads in place, has tensors of the right shards to load the saved state into.
    The parameters do not move (lr 0); the state is overwritten by the checkpoint's."""
    for optimizer in torch_optimizers(method):
        if optimizer.state:
            continue
        params = [p for group in optimizer.param_groups for p in group["params"]]
        lrs = [group["lr"] for group in optimizer.param_groups]
        for p in params:
            p.grad = torch.zeros_like(p)
        for group in optimizer.param_groups:
            group["lr"] = 0.0
        optimizer.step()
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
        for p in params:
            p.grad = None


def _state_dicts(method: Any) -> dict[str, Any]:
    """What DCP saves and loads in place: the model's unique parameters (shards where sharded) and the method's
    state."""
    return {"model": unique_parameters(method.eval_model()), "method": method.state_dict()}


def write_shards(folder: Path, method: Any, meters: Any, zo_seeds: Optional[torch.Generator], world: World) -> None:
    """This rank's part of a checkpoint in ``folder`` (a temp directory rank 0 made): its DCP shard (a collective:
    every rank calls it), then its RNG states and meters."""
    dcp.save(_state_dicts(method), checkpoint_id=folder / DCP_DIR)
    tensors, scalars = capture_rng(zo_seeds)
    torch.save({"rng": tensors, "rng_scalars": json.dumps(scalars), "meters": json.dumps(meters.state_dict())},
               folder / f"rank-{world.rank}.pt")


def write_state(folder: Path, state: Any, config_hash: str, reason: str, world: World) -> None:
    """Rank 0, once every rank has written its part: ``state.json``, then the manifest over every file (last)."""
    import dataclasses
    info = {"format": FORMAT_VERSION, "config_hash": config_hash, "step": state.step, "reason": reason,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "world_size": world.size,
            "loop": dataclasses.asdict(state)}
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
    dcp.FileSystemReader(path / DCP_DIR).read_metadata()


def read_distributed(path: Path, method: Any, state: Any, meters: Any, zo_seeds: Optional[torch.Generator],
                     config_hash: str, run_folder: Path, world: World) -> None:
    """Every rank: the method's parameters and state from the DCP files (resharded to this world size), this rank's
    RNG states and meters (rank 0's when the world size changed), and the loop's position. One process reads it
    too (no process group: DCP reads every shard itself)."""
    info = checked_state(path, config_hash, run_folder)
    prime_optimizers(method)
    states = _state_dicts(method)
    dcp.load(states, checkpoint_id=path / DCP_DIR)         # tensors in place; other values replaced in ``states``
    method.load_state_dict(states["method"])
    rank = world.rank if info.get("world_size") == world.size else 0
    own = torch.load(path / f"rank-{rank}.pt", map_location="cpu", weights_only=True)
    restore_rng(own["rng"], json.loads(own["rng_scalars"]), zo_seeds)
    meters.load_state_dict(json.loads(own["meters"]))
    restore_loop(state, info["loop"])
