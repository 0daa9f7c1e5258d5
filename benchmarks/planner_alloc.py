"""Real CPU allocations of one training step, by tensor accounting, for the planner's check.

    nice -n 10 python benchmarks/planner_alloc.py --out benchmarks/planner_alloc.json

A real (randomly initialised) tiny-opt on CPU, the registry's method set up as benchmarks/planner_traces.py sets it
up, one warm-up step, then one counted step. Counting: every tensor storage alive before the step (found through
``gc``: weights, optimizer state, masters, noise buffers, whatever the process holds) plus every storage an op
returns during the step (a ``TorchDispatchMode``), each held by a weak reference and dropped when it dies; the peak
is the largest sum of live storage bytes at any op. Not RSS, not MemTracker, and real kernels (not fake tensors).
Dispatch modes are thread-local: storages made in hizfo/core/zo.py's worker threads are not seen (tiny-opt's
|Θ_ZO| fits one chunk, which runs in the main thread).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch.distributed._tools.common_utils import get_untyped_storages
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

CELLS = (("full_ft", "fp32"), ("lora", "fp32"), ("hizfo", "fp32"), ("mezo", "fp32"))


class LiveBytes(TorchDispatchMode):
    """The live storage bytes, swept at every op; ``peak`` the largest."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = self.now = 0

    def add(self, t: torch.Tensor) -> None:
        """``t``'s storage; a tensor subclass (FSDP2's DTensor) by the storages it wraps (its local shard). A
        storage of 0 bytes is kept too: FSDP2 frees and re-allocates its unsharded parameters by resizing their
        storages in place (``free_storage``: ``resize_(0)``), which no op reports, so ``sweep`` re-reads sizes."""
        for storage in get_untyped_storages(t):
            ref = StorageWeakRef(storage)
            if ref.cdata not in self.live:
                self.live[ref.cdata] = (ref, storage.nbytes())
                self.now += storage.nbytes()
                self.peak = max(self.peak, self.now)

    def sweep(self) -> None:
        """Drop the storages that died; re-read the size of the others (a storage resized to 0 holds nothing;
        the first version kept its bytes, counting FSDP2's resharded blocks as alive: up to 1.5 MiB a cell)."""
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.now -= self.live.pop(key)[1]
        for key, (ref, size) in self.live.items():
            now = torch.UntypedStorage._new_with_weak_ptr(key).nbytes()
            if now != size:
                self.live[key] = (ref, now)
                self.now += now - size
        self.peak = max(self.peak, self.now)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.sweep()
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.add(t)
        return out


def live_tensors() -> list[torch.Tensor]:
    found = []
    for obj in gc.get_objects():
        with contextlib.suppress(Exception):
            if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
                found.append(obj)
    return found


def alloc_cell(name: str, precision: str, batch: int, seq_len: int) -> dict[str, Any]:
    from types import SimpleNamespace
    from transformers import AutoModelForCausalLM
    from benchmarks.planner_traces import build_method, shape_of
    from hizfo.core.memory import Setting
    from hizfo.core.precision import use_precision
    shape = shape_of("tiny-opt")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(shape.config(), dtype=torch.float32)
    model.eval()                                              # train_dropout=false, as the traces
    fm = SimpleNamespace(model=model, mode=contextlib.nullcontext(), shape=shape, dtype=torch.float32)
    ids = torch.randint(3, model.config.vocab_size, (batch, seq_len))
    one = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    s = Setting(method=name, method_cfg=(), precision=precision, batch=batch, seq_len=seq_len, device="cpu")
    with use_precision(precision):
        method = build_method(name, fm, s, one, lambda: iter([one] * 1000))
        method.train_step(one)                                # warm-up: AdamW state, masters, buffers exist
        gc.collect()
        counter = LiveBytes()
        for t in live_tensors():
            counter.add(t)
        before = counter.now
        start = time.perf_counter()
        with counter:
            method.train_step(one)
    return {"method": name, "precision": precision, "batch": batch, "seq_len": seq_len, "before_step": before,
            "peak": counter.peak, "seconds": round(time.perf_counter() - start, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cells = [alloc_cell(name, precision, 16, 80) for name, precision in CELLS]
    for cell in cells:
        print(json.dumps(cell), flush=True)
    args.out.write_text(json.dumps({"shape": "tiny-opt", "cells": cells}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
