"""Stage one of Hi-ZFO and GreenTrainer (Algorithm 1, lines 1–2): profile, cost, select, partition."""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.tensor import DTensor
from tqdm.auto import tqdm

from hizfo.core import distributed
from hizfo.core.costs import backward_budget, integer_budget, quantize_costs, tensor_costs
from hizfo.errors import ConfigError
from hizfo.registry import check_partition_settings, check_rho  # noqa: F401  (re-exported to the methods)
from hizfo.core.device import synchronize
from hizfo.core.methods import Batch, unique_named_parameters
from hizfo.core.profiling import tensor_importance
from hizfo.core.selection import select_tensors, selection_cost

_LAYER = re.compile(r"\.(\d+)\.")


@dataclass
class Partition:
    """Which tensors get first-order updates (Θ_FO), zeroth-order ones (Θ_ZO), or none (frozen)."""
    fo: list[str]
    zo: list[str]
    frozen: list[str]
    order: list[str]                        # every trainable tensor, nearest the output first
    numel: dict[str, int]
    importance: dict[str, float]
    budget: int
    spent: int
    total_backward: int
    backward_flops_share: float             # backward MACs the selection spends / full backward MACs
    profiling_seconds: float
    selection_seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The record's ``partition`` block: counts, names, and each tensor's set, input side first."""
        sets = {**{n: "fo" for n in self.fo}, **{n: "zo" for n in self.zo}, **{n: "frozen" for n in self.frozen}}
        tensor_sets = []
        for name in reversed(self.order):
            match = _LAYER.search(name)
            tensor_sets.append({"name": name, "set": sets[name], "numel": self.numel[name],
                                "layer": int(match.group(1)) if match else None,
                                "importance": self.importance.get(name)})
        return {"fo_tensors": len(self.fo), "zo_tensors": len(self.zo), "frozen_tensors": len(self.frozen),
                "fo_params": sum(self.numel[n] for n in self.fo), "zo_params": sum(self.numel[n] for n in self.zo),
                "frozen_params": sum(self.numel[n] for n in self.frozen), "fo_names": list(self.fo),
                "budget_buckets": self.budget, "spent_buckets": self.spent,
                "backward_flops_share": self.backward_flops_share, "tensor_sets": tensor_sets,
                "selections": self.history}


def progress(line: str) -> None:
    """One progress line on stderr, where the bars are (tqdm.write keeps an open bar intact); rank 0's only."""
    if distributed.current().is_main:
        tqdm.write(line, file=sys.stderr)


def partition_model(model: nn.Module, batch: Batch, rho: float, lr: float, weight_decay: float,
                    zo_scope: str = "all", buckets: int = 1000, shape: nn.Module | None = None) -> Partition:
    """Profile importance on ``batch``, solve the exact selection within ρ, and split the tensors. ``shape``: the
    model's tree on the meta device (``distributed.skeleton``), whose forward the cost model traces where ``model``
    is FSDP2-sharded (a sharded forward gathers; the costs are the whole batch's either way)."""
    check_rho(rho)
    check_partition_settings(zo_scope, buckets)
    named = [(n, p) for n, p in unique_named_parameters(model) if p.requires_grad]
    batch_size, seq_len = batch["input_ids"].shape                      # [B, N]
    costs = tensor_costs(model if shape is None else shape, batch_size, seq_len)    # nearest the output first
    by_name = dict(named)
    costs = [c for c in costs if c.name in by_name]
    if len(costs) != len(named):
        missing = sorted(set(by_name) - {c.name for c in costs})
        raise ConfigError(f"model: the cost model has no entry for {missing[:3]}")
    order = [c.name for c in costs]

    # an FSDP2-sharded model (several processes): each rank profiles its rows on its shards (hizfo/core/profiling.py)
    sharded = any(isinstance(p, DTensor) for _, p in named)
    world = distributed.current()
    split = f" (each of {world.size} processes up to {-(-batch_size // world.size)} rows)" if sharded else ""
    progress(f"profiling: importance of {len(order)} tensors (eq. 7) on one batch of {batch_size} x {seq_len} "
             f"tokens{split} (2 forward + 2 backward passes) ...")
    device = next(iter(by_name.values())).device
    synchronize(device)                           # the timer measures profiling's GPU work, not what was queued
    start = time.perf_counter()
    importance = tensor_importance(model, [(n, by_name[n]) for n in order],
                                   distributed.rows_of_rank(batch) if sharded else batch, lr, weight_decay)
    synchronize(device)
    profiling_seconds = time.perf_counter() - start
    progress(f"profiling: done in {profiling_seconds:.1f} s; selecting within rho = {rho:g} ...")

    start = time.perf_counter()
    t_dw = np.array([c.t_dw for c in costs], dtype=np.float64)
    t_dy = np.array([c.t_dy for c in costs], dtype=np.float64)
    t_fp = float(sum(c.t_fp for c in costs))
    q_dw, q_dy = quantize_costs(t_dw, t_dy, buckets)
    rho_bp = backward_budget(rho, t_fp, float(t_dw.sum() + t_dy.sum()))
    budget = integer_budget(rho_bp, q_dw, q_dy)
    mask = select_tensors(importance, q_dw, q_dy, budget)
    selection_seconds = time.perf_counter() - start

    selected = np.flatnonzero(mask)
    deepest = int(selected.max()) if selected.size else -1
    spent = int(selection_cost(mask, q_dw, q_dy))
    true_spent = float(selection_cost(mask, t_dw, t_dy))
    progress(f"selection: {selected.size} of {len(order)} tensors first-order, "
             f"{true_spent / float(t_dw.sum() + t_dy.sum()):.0%} of the backward FLOPs, in {selection_seconds:.3f} s")
    fo = [order[k] for k in selected]
    rest = [order[k] for k in range(len(order)) if not mask[k]]
    if zo_scope == "below":
        zo = [n for k, n in enumerate(order) if not mask[k] and k > deepest]
        frozen = [n for k, n in enumerate(order) if not mask[k] and k <= deepest]
    else:
        zo, frozen = rest, []
    return Partition(fo=fo, zo=zo, frozen=frozen, order=order, numel={n: by_name[n].numel() for n in order},
                     importance={n: float(i) for n, i in zip(order, importance)}, budget=budget, spent=spent,
                     total_backward=int(q_dw.sum() + q_dy.sum()),
                     backward_flops_share=true_spent / float(t_dw.sum() + t_dy.sum()),
                     profiling_seconds=profiling_seconds, selection_seconds=selection_seconds)


def params_of(model: nn.Module, names: list[str]) -> list[nn.Parameter]:
    """The tensors named, in the order given (a fixed order keeps ZO noise regeneration exact)."""
    lookup = dict(unique_named_parameters(model))
    return [lookup[n] for n in names]
