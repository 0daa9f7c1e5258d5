"""Per-tensor compute costs (GreenTrainer's cost model) and the FLOPs budget ρ.

Every trainable tensor k gets three costs in multiply-accumulates (MACs) for one batch of
B sequences of N tokens (GreenTrainer's conventions; docs/design.md, "Cost model"):

- ``t_fp``: its share of the forward pass;
- ``t_dw``: computing its weight gradient;
- ``t_dy``: propagating the activation gradient through its op to the op's input.

GreenTrainer writes these by hand for OPT and BLOOM. Here they are derived from module
types and shapes, so any decoder built from ``nn.Linear`` / ``Conv1D``, embeddings and
(RMS/Layer) norms works (OPT, BLOOM, Qwen2, Llama, ...):

=================  ===================  ===================  ===================
op                 t_fp                 t_dw                 t_dy
=================  ===================  ===================  ===================
linear weight      B·N·in·out           B·N·in·out           B·N·in·out
linear bias        B·N·out              B·N·out              0
norm weight        B·N·D                B·N·D                B·N·D
norm bias          B·N·D                B·N·D                0
embedding lookup   0                    V·D (dense grad)     0
attention products 2·B·N²·Dq            --                   4·B·N²·Dq
=================  ===================  ===================  ===================

Dq is the query width (heads × head_dim; k/v may be narrower with grouped heads, the
score and value products still run over every query head).

Placement. Tensors are ordered from the output side (index 0 nearest the output) by the
order in which the forward pass really runs their ops (traced once under
``FakeTensorMode``: no compute, no memory). Costs of ops that have no trainable tensor of
their own -- the attention score/value products, the tied LM head's backward (B·N·V·D),
frozen tensors -- are added to the next trainable tensor below them (deeper), so that
``Σ_{j≤d} t_dy_j`` is what backpropagation down to tensor d costs. This puts the
attention products on the v projection (or the fused query_key_value) and the LM head on
index 0, as GreenTrainer does. A weight used twice (an embedding tied to the LM head)
sits at its first, deepest use; its later uses add their t_fp and t_dw to it
(tied embedding: t_fp = B·N·V·D, t_dw = B·N·V·D + V·D).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from hizfo.errors import ConfigError
from hizfo.registry import check_rho

# child names of an attention module (HF conventions across families)
_FUSED_QKV = {"query_key_value", "qkv_proj", "c_attn", "Wqkv", "W_pack", "qkv"}
_V_PROJ = {"v_proj", "value", "v", "v_lin"}
_Q_PROJ = {"q_proj", "query", "q", "q_lin"}


@dataclass
class TensorCost:
    """MAC costs of one trainable tensor for a batch of B sequences of N tokens."""
    name: str
    numel: int
    t_fp: int
    t_dw: int
    t_dy: int
    kind: str = ""  # e.g. "linear.weight", "norm.bias", "embedding.weight"


@dataclass
class _Slot:
    """One op's use of one tensor (param None: an op with no tensor, e.g. attention products)."""
    param: Optional[nn.Parameter]
    t_fp: int
    t_dw: int
    t_dy: int
    kind: str


def _conv1d_type() -> Optional[type]:
    try:
        from transformers.pytorch_utils import Conv1D
        return Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None


def _is_norm(name: str, module: nn.Module) -> bool:
    """LayerNorm, or any RMSNorm-like module: a 1-D 'weight' and 'norm' in its class or attribute name."""
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or type(module).__name__ == "RMSNorm":
        return True
    own = dict(module.named_parameters(recurse=False))
    weight = own.get("weight")
    named_norm = "norm" in type(module).__name__.lower() or "norm" in name.rsplit(".", 1)[-1].lower()
    return named_norm and weight is not None and all(p.dim() == 1 for p in own.values())


def _query_width(name: str, attention: nn.Module, config: Any) -> int:
    """Dq = heads × head_dim of the attention module that owns the v projection `name`."""
    for child_name, child in attention.named_children():
        if child_name in _Q_PROJ and hasattr(child, "out_features"):
            return int(child.out_features)
    heads = None
    for attr in ("num_heads", "num_attention_heads", "n_head", "n_heads"):
        value = getattr(attention, attr, None) or getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            heads = value
            break
    head_dim = getattr(attention, "head_dim", None) or getattr(config, "head_dim", None)
    if heads is not None and not head_dim and getattr(config, "hidden_size", None):
        head_dim = config.hidden_size // heads
    if heads is None or not head_dim:
        raise ConfigError(f"cost model: cannot read the number of heads / head size of the attention module "
                          f"owning '{name}' ({type(attention).__name__})")
    return int(heads * head_dim)


def _module_slots(name: str, module: nn.Module, tokens: int, seq_len: int, attention_parent: Optional[nn.Module],
                  config: Any) -> list[_Slot]:
    """The slots of one call of `module`, in execution order (weight before bias: the bias is added last)."""
    own = dict(module.named_parameters(recurse=False))
    conv1d = _conv1d_type()
    if isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d)):
        weight = own["weight"]
        # nn.Linear weight is [out, in]; HF Conv1D weight is [in, out]
        fan_in, fan_out = (weight.shape[1], weight.shape[0]) if isinstance(module, nn.Linear) else weight.shape
        macs = tokens * int(fan_in) * int(fan_out)
        slots = [_Slot(weight, macs, macs, macs, "linear.weight")]
        if own.get("bias") is not None:
            slots.append(_Slot(own["bias"], tokens * int(fan_out), tokens * int(fan_out), 0, "linear.bias"))
        leaf = name.rsplit(".", 1)[-1]
        if attention_parent is not None and (leaf in _FUSED_QKV or leaf in _V_PROJ):
            # the score and value products follow the v projection (GreenTrainer puts them on v's t_dy)
            width = _query_width(name, attention_parent, config)
            products = tokens * seq_len * width  # B·N²·Dq per product
            slots.append(_Slot(None, 2 * products, 0, 4 * products, "attention"))
        return slots
    if isinstance(module, nn.Embedding):
        weight = own["weight"]
        # the lookup costs no MACs; its backward writes a dense V×D gradient (GreenTrainer's V·D term)
        return [_Slot(weight, 0, weight.numel(), 0, "embedding.weight")]
    if _is_norm(name, module):
        slots = []
        if own.get("weight") is not None:
            width = own["weight"].numel()
            slots.append(_Slot(own["weight"], tokens * width, tokens * width, tokens * width, "norm.weight"))
        if own.get("bias") is not None:
            width = own["bias"].numel()
            slots.append(_Slot(own["bias"], tokens * width, tokens * width, 0, "norm.bias"))
        return slots
    raise ConfigError(f"cost model: cannot read module '{name}' ({type(module).__name__}) that owns "
                      f"parameter(s) {', '.join(f'{name}.{p}' for p in own)}")


def _check_readable(model: nn.Module) -> None:
    """Every module that owns a parameter is one the cost model knows (raises ConfigError naming it)."""
    conv1d = _conv1d_type()
    for name, module in model.named_modules():
        own = dict(module.named_parameters(recurse=False))
        if not own or isinstance(module, (nn.Linear, nn.Embedding)) or \
                (conv1d is not None and isinstance(module, conv1d)) or _is_norm(name, module):
            continue
        raise ConfigError(f"cost model: cannot read module '{name}' ({type(module).__name__}) that owns "
                          f"parameter(s) {', '.join(f'{name}.{p}' for p in own)}")


def _attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Name → module of each attention block that has a recognised v projection or fused qkv."""
    conv1d = _conv1d_type()
    projection_types = (nn.Linear,) + ((conv1d,) if conv1d is not None else ())
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        children = dict(module.named_children())
        has_v = any(c in children and isinstance(children[c], projection_types) for c in _FUSED_QKV | _V_PROJ)
        if has_v:
            found[name] = module
        elif "attention" in type(module).__name__.lower() and any(
                isinstance(c, projection_types) for c in children.values()):
            raise ConfigError(f"cost model: attention module '{name}' ({type(module).__name__}) has no v projection "
                              f"or fused qkv named one of {sorted(_V_PROJ | _FUSED_QKV)}")
    return found


def _snapshot_tensors(model: nn.Module) -> list[tuple[dict, str, Any]]:
    """Every tensor a module holds (parameters, buffers, plain attributes), to undo a trace that replaced one."""
    held = []
    for module in model.modules():
        for store in (module._parameters, module._buffers, module.__dict__):
            for key, value in list(store.items()):
                if isinstance(value, torch.Tensor):
                    held.append((store, key, value))
    return held


def _trace_calls(model: nn.Module, owners: list[str]) -> list[str]:
    """Names of the parameter-owning modules in the order the forward pass calls them (repeats kept)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    modules = dict(model.named_modules())
    calls: list[str] = []
    hooks = [modules[n].register_forward_pre_hook(lambda _m, _a, n=n: calls.append(n)) for n in owners]
    held = _snapshot_tensors(model)
    training = {m: m.training for m in model.modules()}
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    device = embeddings.weight.device if embeddings is not None else next(iter(model.parameters())).device
    try:
        model.eval()
        # FakeTensorMode runs the real Python forward on shapes only: no compute and no memory,
        # and it works on meta-device models too
        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
            ids = torch.zeros(1, 4, dtype=torch.long, device=device)
            model(input_ids=ids, use_cache=False)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure means we cannot read the model
        raise ConfigError(f"cost model: cannot trace a forward pass of {type(model).__name__} "
                          f"to order its tensors: {exc}".splitlines()[0]) from exc
    finally:
        for hook in hooks:
            hook.remove()
        for store, key, value in held:
            if store.get(key) is not value:
                store[key] = value
        for module, mode in training.items():
            module.train(mode)
    return calls


def forward_order(model: nn.Module) -> list[str]:
    """The parameter-owning modules in the order the forward calls them (``tensor_costs``' ``calls``: the order does
    not depend on the batch, so a caller costing one model at many batch shapes traces it once)."""
    return _trace_calls(model, [n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))])


def tensor_costs(model: nn.Module, batch_size: int, seq_len: int, trainable_only: bool = True,
                 calls: Optional[list[str]] = None) -> list[TensorCost]:
    """Costs of each unique (trainable) tensor for a batch_size × seq_len batch, index 0 nearest the output
    (``calls``: ``forward_order(model)`` when the caller has it already)."""
    if batch_size <= 0 or seq_len <= 0:
        raise ConfigError(f"cost model: batch_size and seq_len must be positive (got {batch_size}, {seq_len})")
    tokens = batch_size * seq_len
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=True)}
    owners = [n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    _check_readable(model)  # before the trace, so that even a module the forward skips is reported
    attention = _attention_modules(model)
    config = getattr(model, "config", None)
    modules = dict(model.named_modules())

    slots: list[_Slot] = []  # execution order
    for call in calls if calls is not None else _trace_calls(model, owners):
        parent = attention.get(call.rsplit(".", 1)[0] if "." in call else "")
        slots.extend(_module_slots(call, modules[call], tokens, seq_len, parent, config))

    # the first use of a tensor is its position (deepest use); later uses are folded into it
    seen: dict[int, _Slot] = {}
    placed: list[_Slot] = []
    for slot in slots:
        if slot.param is None:
            placed.append(slot)
        elif id(slot.param) in seen:
            owner = seen[id(slot.param)]
            owner.t_fp += slot.t_fp
            owner.t_dw += slot.t_dw
            # its activation-gradient propagation stays where the op runs (tied LM head: at the output)
            placed.append(_Slot(None, 0, 0, slot.t_dy, slot.kind + "(tied use)"))
        else:
            copy = _Slot(slot.param, slot.t_fp, slot.t_dw, slot.t_dy, slot.kind)
            seen[id(slot.param)] = copy
            placed.append(copy)
    unused = [n for n, p in model.named_parameters(remove_duplicate=True)
              if id(p) not in seen and (p.requires_grad or not trainable_only)]
    if unused:
        raise ConfigError(f"cost model: parameter(s) {', '.join(unused)} are never used by a module the cost "
                          f"model can read in a forward pass")

    # walk from the output: costs with no trainable tensor of their own go to the next tensor below
    costs: list[TensorCost] = []
    pending_fp = pending_dy = 0
    for slot in reversed(placed):
        keep = slot.param is not None and (slot.param.requires_grad or not trainable_only)
        if not keep:
            pending_fp += slot.t_fp
            pending_dy += slot.t_dy
            continue
        costs.append(TensorCost(name=names[id(slot.param)], numel=slot.param.numel(),
                                t_fp=slot.t_fp + pending_fp, t_dw=slot.t_dw, t_dy=slot.t_dy + pending_dy,
                                kind=slot.kind))
        pending_fp = pending_dy = 0
    if not costs:
        raise ConfigError("cost model: the model has no trainable parameters")
    # below the deepest trainable tensor no gradient is propagated; its forward still runs
    costs[-1].t_fp += pending_fp
    return costs


def cost_arrays(costs: list[TensorCost]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t_fp, t_dw, t_dy) as int64 arrays in the order of `costs`."""
    return (np.array([c.t_fp for c in costs], dtype=np.int64), np.array([c.t_dw for c in costs], dtype=np.int64),
            np.array([c.t_dy for c in costs], dtype=np.int64))


def backward_budget(rho: float, t_fp_total: float, t_bp_total: float) -> float:
    """ρ_bp: the share of the full backward that a step may spend, given ρ of forward+backward FLOPs."""
    # GreenTrainer: ρ·(t_fp + t_bp) = t_fp + ρ_bp·t_bp; clamped to 0.05 when ≤ 0 (explains Table 4)
    check_rho(rho)
    if t_bp_total <= 0 or t_fp_total < 0:
        raise ConfigError(f"cost model: totals must be positive (t_fp={t_fp_total}, t_bp={t_bp_total})")
    ratio = t_fp_total / t_bp_total
    rho_bp = rho * (1.0 + ratio) - ratio
    return rho_bp if rho_bp > 0 else 0.05


def quantize_costs(t_dw: np.ndarray, t_dy: np.ndarray, buckets: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Integer costs floor(cost / total backward · buckets), as GreenTrainer (Tq = 1000; tiny tensors cost 0)."""
    if buckets <= 0:
        raise ConfigError(f"cost model: buckets must be positive (got {buckets})")
    t_dw = np.asarray(t_dw, dtype=np.float64)
    t_dy = np.asarray(t_dy, dtype=np.float64)
    total = t_dw.sum() + t_dy.sum()
    if total <= 0:
        raise ConfigError("cost model: the total backward cost is zero")
    return (np.floor(t_dw / total * buckets).astype(np.int64), np.floor(t_dy / total * buckets).astype(np.int64))


def integer_budget(rho_bp: float, q_dw: np.ndarray, q_dy: np.ndarray) -> int:
    """The DP's capacity: int(ρ_bp · Σ quantised costs)."""
    return int(rho_bp * (int(np.sum(q_dw)) + int(np.sum(q_dy))))
