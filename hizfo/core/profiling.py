"""Tensor importance (paper Appendix C.1, eq. 7): I_k = −Σ_i Δw_i · ∂L/∂w_i at w1 = w0 + Δw.

Δw is AdamW's first step from zero state (GreenTrainer's probe). With m = (1−β1)g0, v = (1−β2)g0² and both bias
corrections, that step is closed-form (torch.optim.AdamW: decay first, then eps added to the corrected √v):

    Δw = −η·g0/(|g0| + eps) − η·λ_k·w0          λ_k = weight_decay, or 0 where hizfo.core.methods.no_decay says so

so no optimizer is built and nothing leaks into training (GreenTrainer reuses its real optimizer here and its
state leaks into training: docs/design.md, "Importance"). Both passes run tensor by tensor inside autograd's own hooks
(``register_post_accumulate_grad_hook``), so no whole-model gradient, copy of w0 or Δw ever exists:

  pass 1 at w0: as g0_k lands, encode Δw_k, move w_k to w1 in place, and drop g0_k. (Autograd has used w_k for
                every other gradient by the time w_k's own gradient is complete; its version counter would
                refuse otherwise.)
  pass 2 at w1: as g1_k lands, I_k = −Σ Δw·g1, put w0 back bit for bit, and drop g1_k.

What is kept between the passes is one byte per element (¼ of fp32 weights):
  * fp32 weights: q = round(127·(Δw/η)/top) as int8, with top = 1 + λ·max|w0| ≥ max|Δw/η|. The step applied is
    d = q·unit with unit = η·top/127, and w1 = w0 + d. Undoing is w1 − d, which gives w0 back except where the
    rounding of w0 + d lost information (|w0| ≲ |d|, binade crossings, ties: ~0.5 % of elements); those few keep
    (index, w0) verbatim. I_k uses d, the step as encoded. With λ = 0, top = 1 and |Δw/η| = |g0|/(|g0| + eps) is
    1 up to eps/|g0| wherever the gradient is not tiny, so q is ±127 and d is Δw up to that. With λ > 0 the code's
    unit grows to η·(1 + λ·max|w0|)/127 and Δw/η takes any value in between, so rounding to nearest would bias a
    tensor's I_k by up to (1 + λ·max|w0|)/254 of Σ|η·g1|; there q is rounded stochastically instead (dithered,
    seeded per tensor so profiling replays): E[d] = Δw, |d − Δw| < unit, and I_k carries no rounding bias, only
    zero-mean noise of at most unit·‖g1‖₂ (tests/unit/test_profiling.py checks both).
  * bf16 / fp16 weights: a step of ~η is far below their spacing and rounding to nearest would lose it, so
    w1 = SR(w0 + Δw) (stochastic rounding, unbiased), and the code is the move in grid steps,
    ordinal(w1) − ordinal(w0), undone in integers (|steps| > 127: verbatim). I_k uses w1 − w0.

A tensor's gradient normally lands once per backward. Under reentrant activation checkpointing a tensor shared
by two checkpointed segments gets it in parts (one inner backward each), and each segment's recomputation reads
the weights as they are then, so moving a tensor at its first part would corrupt the rest. The first pass
notices a second part, puts every weight back bit for bit, and profiling runs again with the parts accumulated:
every gradient is kept whole until the backward ends, then each tensor is moved (pass 1) or scored and put back
(pass 2) once. That mode (also chosen at once for a model whose modules report ``gradient_checkpointing``)
holds a whole gradient, as training does.

The output head is the other big consumer: [N, V] logits, their log-softmax kept for the backward, and a dense
V×H weight gradient that, for a head tied to the input embedding (OPT, BLOOM, small Qwen2), autograd would hold
for the whole backward while it waits for the embedding's part. For the supported families (fp32 heads) the loss
is computed here a vocabulary block at a time (``_BlockwiseHeadLoss``: the same cross-entropy as the model's own,
logits recomputed in the backward), and the head's gradient is encoded block by block as it is produced; only
the rows the embedding looked up wait, as a few rows, for the embedding's part.

Peak: the weights, one pass's activations, the codes and one chunk of scratch; a Hi-ZFO step holds the weights
plus ~4 × Θ_FO and Full FT 4 × the weights (benchmarks/RESULTS_step_cost.md has the measured figures).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn

from hizfo.core.methods import Batch, causal_lm_loss, no_decay
from hizfo.core.precision import compute_context, from_ordinal, is_low_precision, ordinal, round_to

CHUNK_CPU = 1 << 18          # elements per piece of elementwise work: scratch stays ~1 MiB per buffer
CHUNK_CUDA = 1 << 22
ADAM_EPS = 1e-8              # torch.optim.AdamW's default eps (hizfo.core.methods.adamw leaves it at the default)
_SR_SEED = 0x51A7E           # stochastic rounding of the probe step on bf16 weights: fixed, so profiling replays
_DITHER_SEED = 0xD17E0       # stochastic rounding of the fp32 weights' codes where λ > 0: fixed, so profiling replays


class _GradientInParts(Exception):
    """A tensor's gradient landed a second time in one backward (reentrant checkpointing): redo, accumulating."""


class _Scratch:
    """Reused chunk-sized buffers: no allocation (and no page faults) per chunk."""

    def __init__(self, device: torch.device) -> None:
        self.size = CHUNK_CUDA if device.type == "cuda" else CHUNK_CPU
        self.f = [torch.empty(self.size, dtype=torch.float32, device=device) for _ in range(3)]
        self.flag = torch.zeros(self.size + 8, dtype=torch.bool, device=device)

    def where(self, n: int) -> torch.Tensor:
        """Indices of the True entries of ``self.flag[:n]``, found 8 at a time: the few exceptions cost a scan
        of int64 words instead of torch.nonzero over every element (about 5× faster on CPU)."""
        padded = (n + 7) // 8 * 8
        self.flag[n:padded] = False
        words = torch.nonzero(self.flag[:padded].view(torch.int64)).view(-1)
        if not words.numel():
            return words
        rows, cols = torch.nonzero(self.flag[:padded].view(-1, 8)[words], as_tuple=True)
        return words[rows] * 8 + cols


@dataclass
class _Move:
    """What undoes w0 → w1 for one tensor."""
    code: torch.Tensor                          # int8, flat: q (fp32 weights) or grid steps (bf16 / fp16)
    unit: Optional[torch.Tensor] = None         # fp32 0-dim: η·top/127, d = q·unit (fp32 weights)
    top: Optional[torch.Tensor] = None          # fp32 0-dim: the code's full scale in Δw/η
    encoded: bool = False                       # the code holds Δw (the head's is written block by block)
    moved: bool = False                         # the weights are at w1
    exceptions: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # chunk → (idx, w0)
    partial: Optional[torch.Tensor] = None      # pass 2 of a tied tensor: Σ d·g1 of the part that landed first
    parts: int = 0                              # tied tensor: gradient parts seen in this pass
    generator: Optional[torch.Generator] = None  # λ > 0: the dither of the code (unbiased d)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Elementwise chunk work on one CPU thread: it is memory-bound, and on a busy machine every multi-threaded
    kernel waits at its barrier for a descheduled thread (hundreds of small kernels per tensor made profiling
    10× slower on the shared 2-core box)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _chunks(n: int, scratch: _Scratch):
    return enumerate(range(0, n, scratch.size))


def _encode(code: torch.Tensor, x: torch.Tensor, w0: torch.Tensor, g0: torch.Tensor, decay: float,
            top: torch.Tensor, generator: Optional[torch.Generator] = None) -> None:
    """code ← round(127·(Δw/η)/top), int8; ``x`` is fp32 scratch of the same length. With a ``generator`` the
    rounding is stochastic, floor(y + U) with U ~ U[0, 1): E[code] = 127·(Δw/η)/top exactly."""
    g = g0 if g0.dtype == torch.float32 else g0.float()
    torch.abs(g, out=x)
    x.add_(ADAM_EPS)
    torch.div(g, x, out=x)                                        # −Δw/η without decay
    if decay:
        x.add_(w0, alpha=decay)
    x.mul_(-127.0 / top)
    if generator is None:
        x.round_()
    else:                                                         # |y| ≤ 127, so floor(y + U) stays in int8
        x.add_(torch.rand(x.shape, generator=generator, device=x.device)).floor_()
    code.copy_(x)


def _top(flat: torch.Tensor, decay: float, scratch: _Scratch) -> torch.Tensor:
    """1 + λ·max|w0| ≥ max|Δw/η| (|g0|/(|g0| + eps) < 1): the code's full scale, from w0 alone."""
    top = torch.ones((), device=flat.device)
    if decay:
        for _, a in _chunks(flat.numel(), scratch):
            piece = flat[a:a + scratch.size]
            top = torch.maximum(top, 1.0 + decay * torch.amax(torch.abs(piece, out=scratch.f[0][:piece.numel()])))
    return top


@torch.no_grad()
def _start_move(p: torch.Tensor, lr: float, decay: float, scratch: _Scratch,
                g0: Optional[torch.Tensor], index: int = 0) -> _Move:
    """A move for fp32 ``p``: its unit, and its code from ``g0`` when given (a tied tensor encodes in parts)."""
    flat = p.detach().view(-1)
    top = _top(flat, decay, scratch)
    move = _Move(torch.empty(flat.numel(), dtype=torch.int8, device=p.device), unit=top * (lr / 127.0), top=top)
    if decay:
        move.generator = torch.Generator(device=p.device).manual_seed(_DITHER_SEED + index)
    if g0 is not None:
        _encode_all(p, move, g0, decay, scratch)
    return move


def _encode_all(p: torch.Tensor, move: _Move, g0: torch.Tensor, decay: float, scratch: _Scratch) -> None:
    flat, grad = p.detach().view(-1), g0.view(-1)
    for _, a in _chunks(flat.numel(), scratch):
        w0 = flat[a:a + scratch.size]
        _encode(move.code[a:a + w0.numel()], scratch.f[0][:w0.numel()], w0, grad[a:a + w0.numel()], decay,
                move.top, move.generator)
    move.encoded = True


@torch.no_grad()
def _apply_code(p: torch.Tensor, move: _Move, scratch: _Scratch) -> None:
    """w0 → w1 = w0 + q·unit in place; keep w0 verbatim where w1 − d would not give it back."""
    flat = p.detach().view(-1)
    for c, a in _chunks(flat.numel(), scratch):
        w0 = flat[a:a + scratch.size]
        n = w0.numel()
        x, y, z = (buf[:n] for buf in scratch.f)
        d = torch.mul(x.copy_(move.code[a:a + n]), move.unit, out=y)
        w1 = torch.add(w0, d, out=x)
        back = torch.sub(w1, d, out=z)                            # w1 − d: w0 again, or not quite
        torch.ne(back.view(torch.int32), w0.view(torch.int32), out=scratch.flag[:n])   # bitwise (±0, NaN)
        where = scratch.where(n)
        if where.numel():
            move.exceptions[c] = (where, w0[where])
        w0.copy_(w1)
    move.moved = True


@torch.no_grad()
def _dot_code(move: _Move, g1: torch.Tensor, scratch: _Scratch) -> torch.Tensor:
    """Σ d·g1 with d = q·unit, accumulated in float64 on the device."""
    grad = g1.view(-1)
    total = torch.zeros((), dtype=torch.float64, device=g1.device)
    for _, a in _chunks(grad.numel(), scratch):
        g = grad[a:a + scratch.size]
        x = scratch.f[0][:g.numel()].copy_(move.code[a:a + g.numel()])
        total += torch.dot(x, g if g.dtype == torch.float32 else g.float())
    return total * move.unit


@torch.no_grad()
def _undo_code(p: torch.Tensor, move: _Move, scratch: _Scratch) -> None:
    """w1 → w0 bit for bit: w1 − d with the same d, then the verbatim exceptions."""
    flat = p.detach().view(-1)
    for c, a in _chunks(flat.numel(), scratch):
        w1 = flat[a:a + scratch.size]
        x = scratch.f[0][:w1.numel()]
        w1.sub_(x.copy_(move.code[a:a + w1.numel()]).mul_(move.unit))
        if c in move.exceptions:
            w1[move.exceptions[c][0]] = move.exceptions[c][1]
    move.moved = False


@torch.no_grad()
def _apply_low(p: torch.Tensor, g0: torch.Tensor, lr: float, decay: float, index: int,
               scratch: _Scratch) -> _Move:
    """bf16 / fp16 ``p``: w1 = SR(w0 + Δw) (bf16; nearest for fp16), coded as grid steps."""
    flat, grad = p.detach().view(-1), g0.view(-1)
    move = _Move(torch.empty(flat.numel(), dtype=torch.int8, device=p.device))
    generator = torch.Generator(device=p.device).manual_seed(_SR_SEED + index)
    for c, a in _chunks(flat.numel(), scratch):
        w0 = flat[a:a + scratch.size]
        n = w0.numel()
        x, y = scratch.f[0][:n], scratch.f[1][:n]
        g = grad[a:a + n].float()
        torch.abs(g, out=x)
        x.add_(ADAM_EPS)
        torch.div(g, x, out=x)                                    # −Δw/η without decay
        if decay:
            x.add_(w0.float(), alpha=decay)
        y.copy_(w0).sub_(x, alpha=lr)                             # w0 + Δw in fp32
        w1 = round_to(y, p.dtype, generator)
        moved = ordinal(w1) - ordinal(w0)                         # grid steps, exact in integers
        bad = torch.gt(moved.abs(), 127, out=scratch.flag[:n])
        move.code[a:a + n] = moved.masked_fill_(bad, 0)
        where = scratch.where(n)
        if where.numel():
            move.exceptions[c] = (where, w0[where])
        w0.copy_(w1)
    move.moved = True
    return move


@torch.no_grad()
def _undo_low(p: torch.Tensor, g1: Optional[torch.Tensor], move: _Move, scratch: _Scratch) -> float:
    """Put bf16 / fp16 w0 back bit for bit; return Σ (w1 − w0)·g1."""
    flat = p.detach().view(-1)
    total = torch.zeros((), dtype=torch.float64, device=p.device)
    for c, a in _chunks(flat.numel(), scratch):
        w1 = flat[a:a + scratch.size]
        n = w1.numel()
        back = from_ordinal(ordinal(w1) - move.code[a:a + n].to(torch.int32), p.dtype)
        if c in move.exceptions:
            back[move.exceptions[c][0]] = move.exceptions[c][1]
        if g1 is not None:
            delta = torch.sub(w1.float(), back.float(), out=scratch.f[0][:n])   # exact: neighbours on the grid
            total += torch.dot(delta, g1.view(-1)[a:a + n].float())
        w1.copy_(back)
    move.moved = False
    return float(total)


# ---------------------------------------------------------------------------------------------------
# the loss, with the output head taken a vocabulary block at a time

HEAD_FAMILIES = ("opt", "bloom", "qwen2", "llama")   # logits = lm_head(last hidden state), plain cross-entropy
_HEAD_BLOCK_ELEMENTS = 1 << 21                        # one block's logits [N, b] and gradient [b, H]: 8 MiB


class _BlockwiseHeadLoss(torch.autograd.Function):
    """Mean cross-entropy of hidden @ Wᵀ over the target tokens (HF's ForCausalLMLoss), block by block over the
    vocabulary: no [N, V] logits are kept, and W's gradient goes to ``sink(start, grad_rows)`` one block at a
    time instead of into a dense V×H tensor (the biggest single gradient of a small model)."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,    # type: ignore[override]
                sink: Callable[[Optional[int], Optional[torch.Tensor]], None], block: int) -> torch.Tensor:
        device = hidden.device.type
        cast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        with torch.autocast(device, enabled=False):
            lse = torch.stack([_logits(hidden, weight[a:a + block], cast).logsumexp(dim=1)
                               for a in range(0, weight.shape[0], block)]).logsumexp(dim=0)         # [N]
            picked = _logits_of(hidden, weight[targets], cast)                                      # [N]
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.sink, ctx.block, ctx.cast = sink, block, cast
        return (lse - picked).mean()

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):                                          # type: ignore[override]
        hidden, weight, targets, lse = ctx.saved_tensors
        n, block = hidden.shape[0], ctx.block
        grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
        h = hidden.float()
        for a in range(0, weight.shape[0], block):
            w = weight[a:a + block]
            probs = _logits(hidden, w, ctx.cast).sub_(lse[:, None]).exp_()                # softmax rows, [N, b]
            mine = (targets >= a) & (targets < a + w.shape[0])
            probs[mine.nonzero().view(-1), targets[mine] - a] -= 1.0                        # − one-hot
            probs.mul_(grad_loss / n)
            grad_hidden.addmm_(probs, w.float())
            ctx.sink(a, probs.t() @ h)                                                      # ∂L/∂W rows, [b, H]
        ctx.sink(None, None)                                                                # W's gradient is whole
        return grad_hidden.to(hidden.dtype), None, None, None, None


def _logits(hidden: torch.Tensor, w: torch.Tensor, cast: Optional[torch.dtype]) -> torch.Tensor:
    if cast is not None:                                  # as autocast's linear would: low-precision matmul
        return (hidden.to(cast) @ w.to(cast).t()).float()
    return (hidden @ w.t()).float()


def _logits_of(hidden: torch.Tensor, rows: torch.Tensor, cast: Optional[torch.dtype]) -> torch.Tensor:
    if cast is not None:
        return (hidden.to(cast) * rows.to(cast)).float().sum(dim=1)
    return (hidden * rows).float().sum(dim=1)


def _head_weight(model: nn.Module) -> Optional[nn.Parameter]:
    """The output head's weight where the blockwise loss reproduces the model's own, else None."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    family = getattr(getattr(model, "config", None), "model_type", None)
    if family not in HEAD_FAMILIES or not isinstance(head, nn.Linear) or head.bias is not None:
        return None
    if is_low_precision(head.weight) or getattr(model, "base_model", model) is model:
        return None
    return head.weight


def _profiling_loss(model: nn.Module, batch: Batch, head_weight: Optional[nn.Parameter],
                    sink: Callable[[Optional[int], Optional[torch.Tensor]], None]) -> torch.Tensor:
    """The batch's loss; with a supported head, the blockwise one (same value up to rounding)."""
    if head_weight is None:
        return causal_lm_loss(model, batch)
    with compute_context(batch["input_ids"].device):                   # bf16-mixed: autocast, as causal_lm_loss
        hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]  # [B,T,H]
    labels = batch["labels"]
    valid = labels[:, 1:] != -100                                        # token t predicts token t + 1
    picked = hidden[:, :-1][valid]                                       # [N, H]
    block = max(256, _HEAD_BLOCK_ELEMENTS // max(1, picked.shape[0], picked.shape[1]))   # [N, b] and [b, H]
    with compute_context(batch["input_ids"].device):                   # the head's matmuls as autocast's linear
        return _BlockwiseHeadLoss.apply(picked, head_weight.detach(), labels[:, 1:][valid], sink, block)


def _embedding_of(model: nn.Module, p: nn.Parameter) -> Optional[nn.Embedding]:
    """The nn.Embedding that also holds ``p`` (a tied head), or None."""
    for module in model.modules():
        if isinstance(module, nn.Embedding) and module.weight is p:
            return module
    return None


def _checkpointed(model: nn.Module) -> bool:
    """Whether a module of ``model`` reports activation checkpointing (transformers' ``gradient_checkpointing``)."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def tensor_importance(model: nn.Module, named_params: Sequence[tuple[str, nn.Parameter]], batch: Batch,
                      lr: float, weight_decay: float = 0.0) -> np.ndarray:
    """Importance of each tensor in ``named_params`` (same order), scaled by max|I| (Appendix C.1).

    Each tensor is moved and put back as its gradient lands; if a gradient lands in parts (reentrant
    checkpointing), every weight is put back and the two passes run again with the parts accumulated.
    """
    if not _checkpointed(model):
        try:
            return _importance(model, named_params, batch, lr, weight_decay, accumulate=False)
        except _GradientInParts:
            pass                                                  # the weights are back bit for bit: redo
    return _importance(model, named_params, batch, lr, weight_decay, accumulate=True)


def _importance(model: nn.Module, named_params: Sequence[tuple[str, nn.Parameter]], batch: Batch,
                lr: float, weight_decay: float, accumulate: bool) -> np.ndarray:
    """The two passes; ``accumulate``: act on each gradient once the backward is over, not as it lands."""
    params = [p for _, p in named_params]
    decays = [0.0 if no_decay(name, p) else weight_decay for name, p in named_params]
    flags = [p.requires_grad for p in params]
    saved_grads = [p.grad for p in params]
    importance = np.zeros(len(params), dtype=np.float64)
    moves: dict[int, _Move] = {}
    scratch: dict[torch.device, _Scratch] = {}
    phase: list[str] = []
    head_weight = _head_weight(model)
    head = next((k for k, p in enumerate(params) if p is head_weight), None)   # None: the head is not profiled
    head_state: dict = {"rows": None, "held": None}
    embedding = _embedding_of(model, head_weight) if head is not None else None

    def buffers(p: torch.Tensor) -> _Scratch:
        if p.device not in scratch:
            scratch[p.device] = _Scratch(p.device)
        return scratch[p.device]

    pending: list[int] = []                                       # accumulate: tensors with a gradient, in order

    def on_grad(k: int, p: torch.Tensor) -> None:
        """A gradient landed (whole, or under reentrant checkpointing possibly a part)."""
        if accumulate:                                            # keep it (later parts add to it) until the end
            if k not in pending:
                pending.append(k)
            return
        with _one_thread():
            landed(k, p)
        p.grad = None                                             # g_k is spent

    def flush() -> None:
        """accumulate: every gradient is whole now; act on each once."""
        with _one_thread():
            for k in pending:
                landed(k, params[k])
                params[k].grad = None
        pending.clear()

    def landed(k: int, p: torch.Tensor) -> None:
        if k != head and (k in moves) == (phase[-1] == "first"):  # moved already / put back already
            raise _GradientInParts(k)
        if k == head:
            on_embedding_part(p, p.grad)
        elif phase[-1] == "first":
            if is_low_precision(p):
                moves[k] = _apply_low(p, p.grad, lr, decays[k], k, buffers(p))
            else:
                moves[k] = _start_move(p, lr, decays[k], buffers(p), p.grad, k)
                _apply_code(p, moves[k], buffers(p))
        else:
            move = moves.pop(k)
            if is_low_precision(p):
                importance[k] = -_undo_low(p, p.grad, move, buffers(p))
            else:
                importance[k] = -float(_dot_code(move, p.grad, buffers(p)))
                _undo_code(p, move, buffers(p))

    def head_sink(start: Optional[int], rows_grad: Optional[torch.Tensor]) -> None:
        """The head's gradient, a block of rows at a time (start None: the last block has come)."""
        if head is None:
            return
        with _one_thread():
            head_block(start, rows_grad)

    def head_block(start: Optional[int], rows_grad: Optional[torch.Tensor]) -> None:
        p = params[head]
        s = buffers(p)
        if phase[-1] == "first":
            move = moves.get(head)
            if move is None:
                moves[head] = move = _start_move(p, lr, decays[head], s, None, head)
                shared = head_state["rows"] if embedding is not None else None
                head_state["held"] = None if shared is None else torch.zeros(
                    (shared.numel(), p.shape[1]), dtype=torch.float32, device=p.device)
            if start is None:                                     # W's gradient complete: encoded
                move.encoded, move.parts = True, 1
                if embedding is None:                             # untied: nothing else will come
                    _apply_code(p, move, s)
                    move.parts = 0
                return
            end = start + rows_grad.shape[0]
            _encode(move.code.view(p.shape)[start:end], torch.empty(rows_grad.shape, device=p.device),
                    p.detach()[start:end], rows_grad, decays[head], move.top, move.generator)
            if head_state["held"] is not None:                    # rows the embedding's gradient also reaches
                rows = head_state["rows"]
                mine = (rows >= start) & (rows < end)
                head_state["held"][mine] = rows_grad[rows[mine] - start]
        else:
            move = moves[head]
            if start is None:
                move.parts += 1
                if embedding is None or move.parts == 2:
                    finish_head(p, move, s)
                return
            x = move.code.view(p.shape)[start:start + rows_grad.shape[0]].float()
            dot = torch.dot(x.view(-1), rows_grad.reshape(-1)).double() * move.unit
            move.partial = dot if move.partial is None else move.partial + dot

    def on_embedding_part(p: torch.Tensor, grad: torch.Tensor) -> None:
        """A tied head's other part: the input embedding's gradient (its looked-up rows only), landing last."""
        s = buffers(p)
        move = moves.get(head)
        if move is None or (phase[-1] == "first" and move.moved):  # a second part: put back already / moved
            raise _GradientInParts(head)
        if phase[-1] == "first":
            rows = head_state["rows"]
            total = head_state["held"] + grad[rows].float()
            row_codes = torch.empty(total.shape, dtype=torch.int8, device=p.device)
            _encode(row_codes, torch.empty(total.shape, device=p.device), p.detach()[rows], total, decays[head],
                    move.top, move.generator)
            move.code.view(p.shape)[rows] = row_codes             # those rows: Δw from the whole gradient
            head_state["held"] = None
            _apply_code(p, move, s)
            move.parts = 0
        else:
            dot = _dot_code(move, grad, s)
            move.partial = dot if move.partial is None else move.partial + dot
            move.parts += 1
            if move.parts == 2:
                finish_head(p, move, s)

    def finish_head(p: torch.Tensor, move: _Move, s: _Scratch) -> None:
        importance[head] = -float(move.partial) if move.partial is not None else 0.0
        _undo_code(p, moves.pop(head), s)

    def capture_rows(module: nn.Module, args: tuple) -> None:
        head_state["rows"] = torch.unique(args[0].detach().reshape(-1))   # the rows this forward looks up

    handles = []
    try:
        for k, p in enumerate(params):
            p.requires_grad_(True)
            p.grad = None
            handles.append(p.register_post_accumulate_grad_hook(lambda q, k=k: on_grad(k, q)))
        if embedding is not None:
            handles.append(embedding.register_forward_pre_hook(capture_rows))
        phase.append("first")
        _profiling_loss(model, batch, head_weight, head_sink).backward()    # g0 at w0; every tensor leaves at w1
        flush()
        if head is not None and head in moves and moves[head].parts == 1:   # the embedding part never came
            on_embedding_part(params[head], torch.zeros_like(params[head]))
        phase.append("second")
        _profiling_loss(model, batch, head_weight, head_sink).backward()    # g1 at w1; every tensor comes back
        flush()
    finally:
        for handle in handles:
            handle.remove()
        for k, move in list(moves.items()):                       # after an error, or a tensor without g1
            p = params[k]
            if not move.moved:
                continue                                          # encoded (or begun) but never moved
            if is_low_precision(p):
                _undo_low(p, None, move, buffers(p))
            else:
                if move.partial is not None:
                    importance[k] = -float(move.partial)
                _undo_code(p, move, buffers(p))
        moves.clear()
        scratch.clear()
        for p, flag, grad in zip(params, flags, saved_grads):
            p.grad = grad
            p.requires_grad_(flag)
    scale = np.abs(importance).max()
    return importance / scale if scale > 0 else importance
