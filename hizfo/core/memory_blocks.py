"""The planner's fast path: a model of L transformer blocks known from a copy of it with two blocks.

Every block of a decoder has the same parameters and runs the same ops, so a plan never builds the full model:

- its parameters are the 2-block copy's, block 1's repeated for blocks 1..L-1 (names ``<blocks>.<i>.<local>``);
- its per-tensor costs (hizfo/core/costs.py) are the copy's, block 0's slice repeated for blocks 0..L-2 (each gets
  the pending costs of the block above it, as block 0 does from block 1) and block 1's for block L-1 (it gets the
  head's);
- the bytes autograd saves in a training forward are counted per block: each saved storage goes to the block whose
  forward first saves it, or to "shared" when it is one of the block's non-hidden inputs (the attention mask, rotary
  cos/sin: made once outside the blocks), or to "outside" (embeddings, head, loss). One forward of the copy set up
  as the full model's first and last blocks gives the outside, shared, first- and last-block bytes; every other
  block's bytes depend only on its pattern (does its input need a gradient; which of its tensors are trainable),
  counted once per pattern with the copy's block 1 (memoised per shape, dtype, tokens and precision).

A block's input is made to need a gradient, where the full model's would, by a forward pre-hook (``detach()``
``.requires_grad_()``: same storage). tests/unit/run/test_plan.py checks the fast count against the full forward's on a
5-block tiny shape for every method.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional

import torch
from torch import nn

from hizfo.core.costs import TensorCost, forward_order, tensor_costs
from hizfo.core.models import decoder_layers
from hizfo.core.precision import use_precision
from hizfo.core.shapes import FakeModel, ModelShape

LAYER_KEYS = {"opt": "num_hidden_layers", "bloom": "n_layer", "qwen2": "num_hidden_layers", "llama": "num_hidden_layers"}
SHORT = 2


def depth(shape: ModelShape) -> int:
    """The number of transformer blocks of ``shape``."""
    key = LAYER_KEYS[shape.family]
    values = dict(shape.kwargs)
    return int(values[key]) if key in values else int(getattr(shape.config(), key))


def with_depth(shape: ModelShape, layers: int) -> ModelShape:
    """``shape`` with ``layers`` blocks (everything else the same)."""
    values = dict(shape.kwargs)
    values[LAYER_KEYS[shape.family]] = layers
    return replace(shape, kwargs=tuple(sorted(values.items())))


@dataclass
class Param:
    """One tensor of the full model: its name, size, block (None outside the blocks) and the name inside the block."""
    name: str
    numel: int
    block: Optional[int]
    local: str
    trainable: bool                    # requires_grad as the method's wrapper (peft) leaves it


@dataclass
class ShortModel:
    """The 2-block copy (as the method wraps it) and what maps it to the full model of ``layers`` blocks."""
    fm: FakeModel
    model: nn.Module
    layers: int
    prefix: str                        # the block list's name among model.named_parameters()
    wrapped: dict[str, bool] = field(default_factory=dict)   # requires_grad as the wrapper left each tensor
    memo: dict = field(default_factory=dict)

    def split(self, name: str) -> tuple[Optional[int], str]:
        """(block index in the copy, name inside the block), or (None, name) outside the blocks."""
        if name.startswith(self.prefix + "."):
            index, _, local = name[len(self.prefix) + 1:].partition(".")
            return int(index), local
        return None, name

    def params(self) -> list[Param]:
        """The full model's tensors in ``named_parameters`` order."""
        out: list[Param] = []
        for name, p in self.model.named_parameters(remove_duplicate=True):
            block, local = self.split(name)
            if block is None or block == 0 or self.layers <= SHORT:
                out.append(Param(name, p.numel(), block, local, self.wrapped.get(name, True)))
            else:
                out.append(Param(name, p.numel(), -1, local, self.wrapped.get(name, True)))   # block 1's run
        first = next((k for k, q in enumerate(out) if q.block == -1), None)
        if first is None:
            return out
        run = [q for q in out if q.block == -1]
        expanded = [Param(f"{self.prefix}.{i}.{q.local}", q.numel, i, q.local, q.trainable)
                    for i in range(1, self.layers) for q in run]
        rest = [q for q in out if q.block != -1]
        return rest[:first] + expanded + rest[first:]

    def full_name(self, block: int, local: str) -> str:
        return f"{self.prefix}.{block}.{local}"


def short_model(fm: FakeModel, model: nn.Module, layers: int) -> ShortModel:
    """Wrap a 2-block (or full, when the model has ≤ 2 blocks) copy: find its block list's name."""
    blocks = decoder_layers(model)
    prefix = next(n for n, m in model.named_modules() if m is blocks)
    wrapped = {n: p.requires_grad for n, p in model.named_parameters(remove_duplicate=True)}
    return ShortModel(fm=fm, model=model, layers=layers, prefix=prefix, wrapped=wrapped)


def expanded_costs(short: ShortModel, batch: int, seq_len: int) -> list[TensorCost]:
    """hizfo/core/costs.py's ``tensor_costs`` of the full model (every tensor trainable), from the copy's."""
    for p in short.model.parameters():
        p.requires_grad_(True)
    if "order" not in short.memo:
        short.memo["order"] = forward_order(short.model)
    costs = tensor_costs(short.model, batch, seq_len, calls=short.memo["order"])
    if short.layers <= SHORT:
        return costs
    index = [short.split(c.name)[0] for c in costs]
    top = [c for c, b in zip(costs, index) if b == 1]
    low = [c for c, b in zip(costs, index) if b == 0]
    head = costs[:index.index(1)]
    tail = costs[len(head) + len(top) + len(low):]
    if any(b is not None for b in index[:len(head)] + index[len(head) + len(top) + len(low):]):
        raise RuntimeError("planner: the 2-block copy's tensors are not ordered block by block")
    out = list(head)
    out += [replace(c, name=short.full_name(short.layers - 1, short.split(c.name)[1])) for c in top]
    for i in range(short.layers - 2, -1, -1):
        out += [replace(c, name=short.full_name(i, short.split(c.name)[1])) for c in low]
    return out + list(tail)


def _storage(t: torch.Tensor) -> int:
    from torch.multiprocessing.reductions import StorageWeakRef
    return StorageWeakRef(t.untyped_storage()).cdata


def _tensors(values: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for v in values:
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, (tuple, list)):
            out += [x for x in v if isinstance(x, torch.Tensor)]
    return out


class _Stop(Exception):
    """Raised after the last block whose bytes are wanted: the rest of the forward (head, loss) is not needed."""


class _Counter:
    """Saved bytes per bucket (outside, shared, b0, b1) of one forward of the copy, each block's input made to need
    a gradient or not as ``want`` says (None: as it comes), and whether each block's input and output need one."""

    def __init__(self, want: tuple[Optional[bool], Optional[bool]], stop_after_block1: bool = False) -> None:
        self.want, self.stop = want, stop_after_block1
        self.current: Optional[int] = None
        self.shared: set[int] = set()
        self.params: set[int] = set()
        self.seen: dict[int, tuple[str, int]] = {}
        self.ins = [False, False]
        self.outs = [False, False]

    def pre(self, index: int) -> Any:
        def hook(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            hidden = args[0] if args else kwargs["hidden_states"]
            want = self.want[index]
            if want is not None and hidden.requires_grad != want:
                hidden = hidden.detach().requires_grad_(want)          # same storage
                args, kwargs = ((hidden,) + args[1:], kwargs) if args else (args, {**kwargs, "hidden_states": hidden})
            self.ins[index] = hidden.requires_grad
            rest = list(args[1:]) + [v for k, v in kwargs.items() if k != "hidden_states"]
            self.shared |= {_storage(t) for t in _tensors(rest)}
            self.current = index
            return args, kwargs
        return hook

    def post(self, index: int) -> Any:
        def hook(_m: nn.Module, _a: Any, out: Any) -> None:
            first = out if isinstance(out, torch.Tensor) else _tensors(out)[0]
            self.outs[index] = first.requires_grad
            self.current = None
            if index == 1 and self.stop:
                raise _Stop
        return hook

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key = _storage(t)
        if key not in self.params and key not in self.seen:
            bucket = "outside" if self.current is None else \
                "shared" if key in self.shared else f"b{self.current}"
            self.seen[key] = (bucket, t.untyped_storage().nbytes())
        return t

    def buckets(self) -> dict[str, int]:
        out = {"outside": 0, "shared": 0, "b0": 0, "b1": 0}
        for bucket, size in self.seen.values():
            out[bucket] += size
        return out


def _forward(short: ShortModel, s: Any, trainable: set[str], want: tuple[Optional[bool], Optional[bool]],
             stop: bool = False) -> _Counter:
    """One training forward of the copy with ``trainable`` (copy names) requiring grad, counted per bucket (``stop``:
    only as far as block 1)."""
    named = list(short.model.named_parameters(remove_duplicate=True))
    for n, p in named:
        p.requires_grad_(n in trainable)
    blocks = list(decoder_layers(short.model))
    counter = _Counter(want, stop)
    counter.params = {_storage(p) for _, p in named}
    handles = [b.register_forward_pre_hook(counter.pre(i), with_kwargs=True) for i, b in enumerate(blocks)]
    handles += [b.register_forward_hook(counter.post(i)) for i, b in enumerate(blocks)]
    rows = max(1, s.batch // s.world_size)
    short.model.train(bool(s.train_dropout))
    try:
        with short.fm.mode, use_precision(s.precision), \
                torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
            from hizfo.core.methods import causal_lm_loss
            ids = torch.zeros(rows, s.seq_len, dtype=torch.long)
            causal_lm_loss(short.model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return counter


def _key(s: Any) -> tuple:
    return (max(1, s.batch // s.world_size), s.seq_len, s.precision, bool(s.train_dropout))


def fast_saved_bytes(short: ShortModel, s: Any, trainable: frozenset) -> int:
    """Bytes autograd saves in one training forward of the full model with ``trainable`` (full names)."""
    if not trainable:
        return 0
    memo = short.memo.setdefault(_key(s), {})
    if trainable in memo:
        return memo[trainable]
    params = short.params()
    L = short.layers
    locals_: list[set[str]] = [set() for _ in range(L)]
    outside = set()
    for q in params:
        if q.name in trainable:
            (outside.add(q.name) if q.block is None else locals_[q.block].add(q.local))
    copy = outside | {short.full_name(0, n) for n in locals_[0]} | {short.full_name(1, n) for n in locals_[-1]}
    ends = _forward(short, s, copy, (None, None))
    if L <= SHORT:
        memo[trainable] = sum(ends.buckets().values())
        return memo[trainable]
    g, total = ends.outs[0], 0                  # does block 1's input need a gradient
    for i in range(1, L - 1):
        size, g = _middle(short, s, g, frozenset(locals_[i]))
        total += size
    if g != ends.ins[1]:                        # the last block's input as the full model's
        ends = _forward(short, s, copy, (None, g))
    memo[trainable] = total + sum(ends.buckets().values())
    return memo[trainable]


def _middle(short: ShortModel, s: Any, g: bool, local: frozenset) -> tuple[int, bool]:
    """(bytes a middle block saves whose input needs a gradient (``g``) and whose ``local`` tensors are trainable,
    whether its output needs one)."""
    memo = short.memo.setdefault(("middle",) + _key(s), {})
    if (g, local) not in memo:
        counter = _forward(short, s, {short.full_name(1, n) for n in local}, (None, g), stop=True)
        memo[(g, local)] = (counter.buckets()["b1"], counter.outs[1])
    return memo[(g, local)]
