"""Per-rank memory under FSDP2 at world size N, by tensor accounting, for the planner's check beyond one process.

    nice -n 10 python -m benchmarks.planner_dist --out benchmarks/planner_dist.json

One process plays rank 0 of N. torch's fake process group (``torch.testing._internal.distributed.fake_pg``, the
tool torch's own memory estimators run FSDP2 on) answers every collective without communicating, so FSDP2 shards,
all-gathers and reduce-scatters real tensors of the sizes an N-process run allocates on each rank; the values are
not that run's (nothing is exchanged), the memory is, and only the memory is kept. Counting is
benchmarks/planner_alloc.py's ``LiveBytes`` (every storage alive before, every storage an op returns during,
swept by weak reference at every op; a DTensor by its local shard). Real kernels, a randomly
initialised model, no MemTracker.

Cells, each against the planner at the same world size with FSDP2 (``Setting(world_size=N, fsdp=True)``):

- ``step``: one training step after a warm-up, the rank's rows of the global batch: ``Prediction.training_peak``;
- ``profile``: Hi-ZFO's importance profile and selection (``partition_model``) on the global batch, on the whole
  model (N = 1, or every rank alike without ``profile_shards``) or on the shards (``profile_shards``, each rank its
  rows): ``Prediction.profiling``. (GreenTrainer's profile is its own code, which the planner models alike: not
  counted here.)
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist

from benchmarks.planner_alloc import LiveBytes, live_tensors

STEP_CELLS = (("full_ft", "fp32"), ("hizfo", "fp32"), ("mezo", "fp32"), ("lora", "fp32"), ("full_ft", "bf16-mixed"),
              ("hizfo", "bf16-mixed"))
RHO = 0.5
PROFILE_SHARDS = (False, True)              # Hi-ZFO's profile: the whole model on every rank, or the shards


@contextlib.contextmanager
def fake_world(size: int) -> Iterator[None]:
    """Rank 0 of ``size`` in a fake process group (nothing when ``size`` is 1)."""
    if size == 1:
        yield
        return
    from torch.testing._internal.distributed.fake_pg import FakeStore
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _model_and_batch(batch: int, seq_len: int) -> tuple[Any, Any, dict[str, torch.Tensor]]:
    from types import SimpleNamespace
    from transformers import AutoModelForCausalLM
    from benchmarks.planner_traces import shape_of
    shape = shape_of("tiny-opt")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(shape.config(), dtype=torch.float32)
    model.eval()                                              # train_dropout=false, as the other harnesses
    ids = torch.randint(3, model.config.vocab_size, (batch, seq_len))
    whole = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    return shape, SimpleNamespace(model=model, mode=contextlib.nullcontext(), shape=shape, dtype=torch.float32), whole


def _counted(counter: LiveBytes, work: Any) -> int:
    """The peak of live bytes while ``work()`` runs, counting from everything alive before it."""
    gc.collect()
    for t in live_tensors():
        counter.add(t)
    with counter:
        work()
    return counter.peak


def step_cell(name: str, precision: str, world: int, batch: int, seq_len: int) -> dict[str, Any]:
    from benchmarks.planner_traces import build_method
    from hizfo.core.distributed import rows_of_rank
    from hizfo.core.memory import Setting
    from hizfo.core.precision import use_precision
    start = time.perf_counter()
    with fake_world(world):
        shape, fm, whole = _model_and_batch(batch, seq_len)
        mine = rows_of_rank(whole)                            # rank 0's rows of the global batch
        s = Setting(method=name, method_cfg=(), precision=precision, batch=batch, seq_len=seq_len, device="cpu")
        with use_precision(precision):
            method = build_method(name, fm, s, mine, lambda: iter([mine] * 1000))
            method.train_step(mine)                           # warm-up: AdamW state, masters, buffers exist
            peak = _counted(LiveBytes(), lambda: method.train_step(mine))
    return {"kind": "step", "method": name, "precision": precision, "world_size": world, "batch": batch,
            "seq_len": seq_len, "peak": peak, "seconds": round(time.perf_counter() - start, 2)}


def profile_cell(on_shards: bool, world: int, batch: int, seq_len: int) -> dict[str, Any]:
    from hizfo.core.distributed import shard, skeleton
    from hizfo.core.partition import partition_model
    start = time.perf_counter()
    with fake_world(world):
        _, fm, whole = _model_and_batch(batch, seq_len)
        model = fm.model
        for p in model.parameters():
            p.requires_grad_(True)
        shape = None
        if on_shards and world > 1:
            shape = skeleton(model)
            shard(model)
        peak = _counted(LiveBytes(), lambda: partition_model(model, whole, RHO, 1e-3, 0.0, shape=shape))
    return {"kind": "profile", "method": "hizfo", "precision": "fp32", "world_size": world, "profile_shards": on_shards,
            "batch": batch, "seq_len": seq_len, "peak": peak, "seconds": round(time.perf_counter() - start, 2)}


def one_cell(spec: list) -> dict[str, Any]:
    """``["step", method, precision, world]`` or ``["profile", on_shards, world]``, measured in this process."""
    if spec[0] == "step":
        return step_cell(spec[1], spec[2], spec[3], 16, 80)
    return profile_cell(spec[1], spec[2], 16, 80)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--world", type=int, action="append", help="world sizes (default 1, 2 and 4)")
    parser.add_argument("--one", help="one cell's spec (JSON), measured here and printed: what each child runs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.one:
        print(json.dumps(one_cell(json.loads(args.one))), flush=True)
        return 0
    if args.out is None:
        parser.error("--out is required")
    # each cell in a fresh process: in one process, what earlier cells leave alive (caches, buffers) was counted as
    # alive before the next (the first committed table carried up to 2.3 MiB of it)
    specs = [[*(["step", n, p, w] for n, p in STEP_CELLS), *(["profile", on, w] for on in PROFILE_SHARDS
                                                            if w > 1 or not on)] for w in args.world or [1, 2, 4]]
    cells = []
    for spec in (s for group in specs for s in group):
        child = subprocess.run([sys.executable, "-m", "benchmarks.planner_dist", "--one", json.dumps(spec)],
                               capture_output=True, text=True, timeout=600, check=True)
        cells.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(json.dumps(cells[-1]), flush=True)
    args.out.write_text(json.dumps({"shape": "tiny-opt", "cells": cells}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
