"""The planner's shape-level facts about one cell: which tensors each method trains and how (its roles), and the
bytes autograd saves in a training forward, counted under ``FakeTensorMode`` block by block on a 2-block copy of the
model (hizfo/core/memory_blocks.py; ``saved_bytes`` on the whole model is the slow reference).

Roles follow the methods' own code: Full FT every tensor (baselines/full_ft.py), FT-Top2 the top blocks
(``decoder_layers``), LoRA / Prefix the peft adapters (their configs as baselines/lora.py and baselines/prefix.py
build them), MeZO every tensor by ZO, Bilevel-ZOFO both LoRA adapters by backprop and the backbone by ZO with an
upper AdamW over both, Hi-ZFO / GreenTrainer the selection: a record's stored Θ_FO, else the cost-only heuristic
(``cost_only_selection``: the most parameters ρ allows; not shown to bound the selection's memory).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from hizfo.core.costs import TensorCost, backward_budget, integer_budget, quantize_costs, tensor_costs
from hizfo.core.models import decoder_layers
from hizfo.core.precision import use_precision
from hizfo.core.selection import select_tensors
from hizfo.core.memory_blocks import (SHORT, Param, ShortModel, depth, expanded_costs, fast_saved_bytes, short_model,
                                      with_depth)
from hizfo.core.shapes import FakeModel, ModelShape, build_fake
from hizfo.errors import ConfigError

Setting = Any      # hizfo.core.memory.Setting (not imported: memory imports this module)

PEFT_METHODS = ("lora", "prefix", "bilevel_zofo")


@dataclass
class ModelRoles:
    """Element counts the closed form needs."""
    total_numel: int
    fo_sizes: list[int]
    zo_numel: int
    vocab: int
    layers: int
    block_numel: int
    kv_width: int
    largest_fo: int
    largest_any: int
    largest_zo: int
    largest_group: int
    hidden: int = 0
    extra_opt_numel: int = 0        # Bilevel-ZOFO: the upper AdamW's state over the backbone
    extra_grad_numel: int = 0       # Bilevel-ZOFO: the backbone's materialised ZO gradient
    master_numel: int = 0
    zo_forward: bool = True
    selection_note: str = ""
    fo_names: frozenset = frozenset()
    ffn_width: int = 0
    gated_ffn: bool = False

    @property
    def fo_numel(self) -> int:
        return sum(self.fo_sizes)


def selection_from_costs(costs: list[TensorCost], rho: float, buckets: int = 1000) -> list[str]:
    """Θ_FO without a profile: the exact DP (hizfo/core/selection.py) within ρ with importance ∝ size, i.e. the most
    parameters the budget allows (the most gradient and AdamW memory a selection can cost)."""
    t_dw = np.array([c.t_dw for c in costs], dtype=np.float64)
    t_dy = np.array([c.t_dy for c in costs], dtype=np.float64)
    q_dw, q_dy = quantize_costs(t_dw, t_dy, buckets)
    rho_bp = backward_budget(rho, float(sum(c.t_fp for c in costs)), float(t_dw.sum() + t_dy.sum()))
    mask = select_tensors(np.array([float(c.numel) for c in costs]), q_dw, q_dy, integer_budget(rho_bp, q_dw, q_dy))
    return [c.name for c, m in zip(costs, mask) if m]


def cost_only_selection(model: nn.Module, batch: int, seq_len: int, rho: float, buckets: int = 1000
                        ) -> list[str]:
    """``selection_from_costs`` over the costs of ``model``'s trainable tensors."""
    return selection_from_costs(tensor_costs(model, batch, seq_len), rho, buckets)


def _peft(fm: FakeModel, s: Setting) -> nn.Module:
    """The fake model wrapped as the method wraps it (peft's configs as baselines/lora.py and prefix.py build them)."""
    from peft import LoraConfig, PrefixTuningConfig
    cfg = s.cfg()
    if s.method == "prefix":
        config: Any = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=int(cfg.get("num_virtual_tokens", 20)),
                                         prefix_projection=bool(cfg.get("prefix_projection", False)))
    else:
        config = LoraConfig(task_type="CAUSAL_LM", r=int(cfg.get("rank", 8)), lora_alpha=float(cfg.get("alpha", 32)),
                            lora_dropout=float(cfg.get("lora_dropout", 0.1)),
                            target_modules=list(cfg.get("target_modules") or s.lora_targets))
    move = nn.Module.to
    # peft moves each new adapter to its layer's device and dtype (a module._apply, which cannot swap fake tensors);
    # the adapters are made on the fake CPU device already (under bf16 they stay fp32: ~0.1 % of the model)
    nn.Module.to = lambda self, *a, **k: self               # type: ignore[method-assign]
    try:
        with fm.mode:
            model = _wrap(fm, s, config)
    finally:
        nn.Module.to = move                                 # type: ignore[method-assign]
    return model


def _wrap(fm: FakeModel, s: Setting, config: Any) -> nn.Module:
    from peft import get_peft_model
    model = get_peft_model(fm.model, config, adapter_name="upper" if s.method == "bilevel_zofo" else "default")
    if s.method == "bilevel_zofo":
        model.add_adapter("lower", config)
        model.set_adapter("lower")                          # the lower step: the most frequent forward
    return model


def _named(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return list(model.named_parameters(remove_duplicate=True))


def model_params(model: nn.Module) -> list[Param]:
    """The tensors of a built model as the planner's table (block index from ``decoder_layers``)."""
    owner = {id(p): i for i, block in enumerate(decoder_layers(model)) for p in block.parameters()}
    return [Param(n, p.numel(), owner.get(id(p)), n, p.requires_grad) for n, p in _named(model)]


def fo_zo(params: list[Param], s: Setting, select: Callable[[float, int], list[str]], layers: int
          ) -> tuple[set[str], set[str], str]:
    """(Θ_FO names, Θ_ZO names, how Θ_FO was chosen) for the method over the model's tensors (``select(rho,
    buckets)``: the cost-only heuristic)."""
    names = [q.name for q in params]
    cfg = s.cfg()
    if s.method == "full_ft":
        return set(names), set(), ""
    if s.method == "ft_top2":
        top = layers - int(cfg.get("top_blocks", 2))
        return {q.name for q in params if q.block is not None and q.block >= top}, set(), ""
    if s.method == "mezo":
        return set(), set(names), ""
    if s.method in ("lora", "prefix"):
        return {q.name for q in params if q.trainable}, set(), ""
    if s.method == "bilevel_zofo":
        adapters = {n for n in names if "lora_" in n}
        return adapters, set(names) - adapters, ""
    if s.method in ("hizfo", "greentrainer"):
        if s.selection is not None:
            fo, note = set(s.selection) & set(names), "a record's stored partition"
        else:
            fo = set(select(float(cfg.get("rho", 0.6)), int(cfg.get("buckets", 1000))))
            note = (f"cost-only heuristic for rho {cfg.get('rho', 0.6)} (the DP with importance proportional to "
                    f"size: the most parameters the budget allows; not a bound on the selection's memory)")
        zo = set(names) - fo if s.method == "hizfo" and cfg.get("zo_update", "estimate") != "disabled" else set()
        return fo, zo, note
    if s.method == "zero_shot":
        return set(), set(), ""
    raise ConfigError(f"method.name: the planner has no model of '{s.method}'")


def _fo_zo(model: nn.Module, s: Setting) -> tuple[set[str], set[str], str]:
    """``fo_zo`` on a built model (the trace harness: benchmarks/planner_traces.py)."""
    params = model_params(model)
    if s.method in ("hizfo", "greentrainer"):
        for _, p in _named(model):
            p.requires_grad_(True)                          # every tensor is a candidate (as the methods' set-up)
    return fo_zo(params, s, lambda rho, buckets: selection_from_costs(tensor_costs(model, s.batch, s.seq_len), rho,
                                                                    buckets), len(decoder_layers(model)))


def saved_bytes(fm: FakeModel, model: nn.Module, s: Setting, trainable: set[str]) -> int:
    """Bytes autograd saves in one training forward of the whole ``model`` with ``trainable`` requiring grad: every
    saved storage counted once, parameters excluded (they are weights); 0 when nothing requires grad. The slow
    reference of hizfo/core/memory_blocks.py's ``fast_saved_bytes``."""
    from torch.multiprocessing.reductions import StorageWeakRef
    named = _named(model)
    for n, p in named:
        p.requires_grad_(n in trainable)
    if not trainable:
        return 0
    params = {StorageWeakRef(p.untyped_storage()).cdata for _, p in named}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = StorageWeakRef(t.untyped_storage()).cdata
        if key not in params:
            seen.setdefault(key, t.untyped_storage().nbytes())
        return t

    rows = max(1, s.batch // s.world_size)
    model.train(s.train_dropout)
    with fm.mode, use_precision(s.precision), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        from hizfo.core.methods import causal_lm_loss
        ids = torch.zeros(rows, s.seq_len, dtype=torch.long)
        causal_lm_loss(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    return sum(seen.values())


def _roles(short: ShortModel, params: list[Param], s: Setting, fo: set[str], zo: set[str], note: str) -> ModelRoles:
    sizes = {q.name: q.numel for q in params}
    base = short.fm.model
    config = base.config
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head")
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    width = getattr(config, "hidden_size")
    fo_sizes = [sizes[n] for n in fo]
    decay = sum(v for n, v in sizes.items() if n in fo and not ("bias" in n or "norm" in n.lower()))
    roles = ModelRoles(total_numel=sum(sizes.values()), fo_sizes=fo_sizes, zo_numel=sum(sizes[n] for n in zo),
                       vocab=int(config.vocab_size), layers=short.layers,
                       block_numel=sum(q.numel for q in params if q.block == 0),
                       kv_width=int(width * kv_heads // heads), largest_fo=max(fo_sizes, default=0),
                       largest_any=max(sizes.values()), largest_zo=max((sizes[n] for n in zo), default=0),
                       largest_group=max(decay, sum(fo_sizes) - decay), selection_note=note, hidden=int(width),
                       master_numel=sum(fo_sizes), fo_names=frozenset(fo),
                       ffn_width=int(getattr(config, "ffn_dim", None) or getattr(config, "intermediate_size", None)
                                     or 4 * width), gated_ffn=config.model_type in ("llama", "qwen2"))
    if s.method == "bilevel_zofo":
        roles.extra_opt_numel = roles.extra_grad_numel = roles.zo_numel
        roles.master_numel += roles.zo_numel
        roles.zo_forward = False            # its ZO forwards run inside the upper step, with no gradient held
        roles.largest_group = max(roles.largest_group, roles.zo_numel)
    if s.method == "hizfo" and s.cfg().get("zo_optimizer", "sgd") == "adamw":
        roles.extra_opt_numel = roles.zo_numel
    if s.method == "greentrainer" and s.world_size > 1:
        roles.master_numel = roles.total_numel   # sharded: every candidate's fp32 master made at once (MasterWeights)
    return roles


_SHORT: dict[tuple, ShortModel] = {}


def short_for(shape: ModelShape, s: Setting) -> ShortModel:
    """The 2-block copy of ``shape`` as the method wraps it (kept for the next cell: a grid plans many)."""
    dtype = torch.bfloat16 if s.precision == "bf16" else torch.float32
    wrap = (s.method, s.method_cfg, s.lora_targets) if s.method in PEFT_METHODS else None
    key = (shape, dtype, wrap)
    if key not in _SHORT:
        layers = depth(shape)
        fm = build_fake(with_depth(shape, min(layers, SHORT)), dtype)
        _SHORT[key] = short_model(fm, _peft(fm, s) if wrap else fm.model, layers)
    return _SHORT[key]


def activations_and_roles(shape: ModelShape, s: Setting) -> tuple[int, int, ModelRoles]:
    """(saved bytes with the method's Θ_FO, saved bytes with every tensor trainable (profiling), roles)."""
    short = short_for(shape, s)
    params = short.params()

    def select(rho: float, buckets: int) -> list[str]:
        key = ("selection", s.batch, s.seq_len, rho, buckets)
        if key not in short.memo:
            short.memo[key] = selection_from_costs(base_costs(shape, s), rho, buckets)
        return short.memo[key]
    fo, zo, note = fo_zo(params, s, select, short.layers)
    act = fast_saved_bytes(short, s, frozenset(fo))
    every = frozenset(q.name for q in params)
    act_all = fast_saved_bytes(short, s, every) if s.method in ("hizfo", "greentrainer") else 0
    return act, act_all, _roles(short, params, s, fo, zo, note)


def base_costs(shape: ModelShape, s: Setting) -> list[TensorCost]:
    """Per-tensor costs of the unwrapped model (every tensor) at the cell's batch and length (memoised)."""
    from dataclasses import replace
    short = short_for(shape, replace(s, method="full_ft"))
    key = ("costs", s.batch, s.seq_len)
    if key not in short.memo:
        short.memo[key] = expanded_costs(short, s.batch, s.seq_len)
    return short.memo[key]


def full_saved_bytes(shape: ModelShape, s: Setting) -> int:
    """The slow reference: the method's Θ_FO on the whole model built on fake tensors, one full forward."""
    dtype = torch.bfloat16 if s.precision == "bf16" else torch.float32
    fm = build_fake(shape, dtype)
    model = _peft(fm, s) if s.method in PEFT_METHODS else fm.model
    fo, _, _ = _fo_zo(model, s)
    return saved_bytes(fm, model, s, fo)
