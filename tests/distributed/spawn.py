"""N processes in one gloo group, spawned by ``torch.multiprocessing``, for tests that call torch.distributed
directly rather than through a run (those go through ``torchrun``: tests/distributed/test_data_parallel.py).

The group meets through a ``FileStore`` in the test's folder, not a TCP store served by rank 0, and every rank
passes a barrier, collects its cyclic garbage (FSDP2's modules, a device mesh) and leaves the group before it
exits: a rank that left while another still spoke to rank 0's store, or that exited with gloo's threads still
held by uncollected objects, ended in ``terminate called without an active exception`` about once in a dozen runs.
"""
from __future__ import annotations

import gc
from pathlib import Path
from typing import Any, Callable


def _enter(rank: int, fn: Callable[..., None], world: int, store: str, args: tuple[Any, ...]) -> None:
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        fn(rank, *args)
        dist.barrier()                              # no rank leaves while another still runs a collective
        gc.collect()
    finally:
        dist.destroy_process_group()


def spawn_gloo(fn: Callable[..., None], args: tuple[Any, ...], world: int, folder: Path) -> None:
    """Run ``fn(rank, *args)`` in ``world`` fresh processes (one torch thread each) of one gloo group; raises when
    a rank fails. ``fn`` must be a module-level function (it is pickled by name); ``folder`` must be new to the
    test (the store's file is made there)."""
    import torch.multiprocessing as mp
    mp.spawn(_enter, args=(fn, world, str(folder / "gloo-store"), args), nprocs=world, join=True)
