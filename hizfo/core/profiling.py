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
    zero-mean noise of at most unit·‖g1‖₂ (tests/unit/core/test_profiling.py checks both).
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

Several processes, on an FSDP2-sharded model (``sharded``): each rank profiles its slice of the batch (the loss scaled
as training scales it, so FSDP's averaged gradient is the whole batch's), FSDP2 calls each tensor's hook with the
reduce-scattered gradient of the rank's shard, and the two passes move, score and put back the rank's shard only:
the code is one byte per element of the shard. Each I_k is then the sum of the ranks' partial sums (one all-reduce of
the importance vector): the same on every rank, so every rank selects alike, and equal to one process's up to the
summation order of the gradients and of the dot products. With weight decay, code_top is the tensor's (a max over
the ranks, taken before the passes), as one process's; the dither's draws are per shard. The blockwise head is not
used there (the head's gradient comes through FSDP2's reduce-scatter like any other).

Peak: the weights, one pass's activations, the codes and one chunk of scratch; a Hi-ZFO step holds the weights
plus ~4 × Θ_FO and Full FT 4 × the weights (benchmarks/RESULTS_step_cost.md has the measured figures).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.distributed.tensor import DTensor

from hizfo.core import distributed
from hizfo.core.methods import Batch, causal_lm_loss, no_decay
from hizfo.core.precision import compute_context, is_low_precision
from hizfo.core.distributed import local
from hizfo.core.probe_step import (Move, Scratch, apply_code, apply_low, code_top, dot_code, encode, one_thread,
                                   start_move,
                                   undo_code, undo_low)

class _GradientInParts(Exception):
    """A tensor's gradient landed a second time in one backward (reentrant checkpointing): redo, accumulating."""


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
            return _Importance(model, named_params, lr, weight_decay, accumulate=False).run(batch)
        except _GradientInParts:
            pass                                                  # the weights are back bit for bit: redo
    return _Importance(model, named_params, lr, weight_decay, accumulate=True).run(batch)


class _Importance:
    """One profiling: pass 1 moves every tensor to w1 as its g0 lands (``move``), pass 2 scores it with g1 and
    puts w0 back (``score``); a tied output head gets its gradient in blocks and from the embedding
    (``head_block_first`` / ``head_block_second``, ``embedding_part``). ``accumulate``: act on each gradient
    once the backward is over, not as it lands."""

    def __init__(self, model: nn.Module, named_params: Sequence[tuple[str, nn.Parameter]], lr: float,
                 weight_decay: float, accumulate: bool) -> None:
        self.model, self.lr, self.accumulate = model, lr, accumulate
        self.params = [p for _, p in named_params]
        self.decays = [0.0 if no_decay(name, p) else weight_decay for name, p in named_params]
        self.importance = np.zeros(len(self.params), dtype=np.float64)
        self.moves: dict[int, Move] = {}
        self.scratch: dict[torch.device, Scratch] = {}
        self.first_pass = True
        self.pending: list[int] = []                              # accumulate: tensors with a gradient, in order
        self.sharded = any(isinstance(p, DTensor) for p in self.params)      # FSDP2: each rank its shards
        self.head_weight = None if self.sharded else _head_weight(model)
        self.tops = self.whole_tops() if self.sharded and any(self.decays) else None
        self.head = next((k for k, p in enumerate(self.params) if p is self.head_weight), None)  # None: not profiled
        self.embedding = _embedding_of(model, self.head_weight) if self.head is not None else None
        self.head_rows: Optional[torch.Tensor] = None            # the rows the embedding looked up
        self.head_held: Optional[torch.Tensor] = None            # the head's gradient on those rows, pass 1

    def whole_tops(self) -> list[torch.Tensor]:
        """Each fp32 tensor's code_top over the whole tensor, as one process computes it: a max over the ranks'
        shards (one all-reduce, before the passes: no collective runs inside autograd's hooks)."""
        tops = torch.stack([code_top(local(p).detach().reshape(-1), d, self.buffers(local(p)))
                            for p, d in zip(self.params, self.decays)])
        return list(distributed.maxed(tops))

    def buffers(self, p: torch.Tensor) -> Scratch:
        if p.device not in self.scratch:
            self.scratch[p.device] = Scratch(p.device)
        return self.scratch[p.device]

    # -- the two passes ------------------------------------------------------------------------------------------
    def run(self, batch: Batch) -> np.ndarray:
        params = self.params
        flags = [p.requires_grad for p in params]
        saved_grads = [p.grad for p in params]
        handles = []
        try:
            for k, p in enumerate(params):
                p.requires_grad_(True)
                p.grad = None
                handles.append(p.register_post_accumulate_grad_hook(lambda q, k=k: self.on_grad(k, q)))
            if self.embedding is not None:
                handles.append(self.embedding.register_forward_pre_hook(self.capture_rows))
            self.first_pass = True
            self.loss(batch).backward()                           # g0 at w0; every tensor leaves at w1
            self.flush()
            head = self.head
            if head is not None and head in self.moves and self.moves[head].parts == 1:  # no embedding part came
                self.embedding_part(params[head], torch.zeros_like(params[head]))
            self.first_pass = False
            self.loss(batch).backward()                           # g1 at w1; every tensor comes back
            self.flush()
        finally:
            for handle in handles:
                handle.remove()
            self.put_back_the_rest()
            for p, flag, grad in zip(params, flags, saved_grads):
                p.grad = grad
                p.requires_grad_(flag)
        if self.sharded:                                          # I_k: the ranks' partial sums added
            self.importance = np.asarray(distributed.summed(self.importance.tolist(), distributed.current()))
        scale = np.abs(self.importance).max()
        return self.importance / scale if scale > 0 else self.importance

    def loss(self, batch: Batch) -> torch.Tensor:
        if self.sharded:                                          # this rank's slice; FSDP averages to the batch's
            return distributed.data_parallel_loss(causal_lm_loss(self.model, batch), batch)[0]
        return _profiling_loss(self.model, batch, self.head_weight, self.head_sink)

    def on_grad(self, k: int, p: torch.Tensor) -> None:
        """A gradient landed (whole, or under reentrant checkpointing possibly a part)."""
        if self.accumulate:                                       # keep it (later parts add to it) until the end
            if k not in self.pending:
                self.pending.append(k)
            return
        with one_thread():
            self.landed(k, p)
        p.grad = None                                             # g_k is spent

    def flush(self) -> None:
        """accumulate: every gradient is whole now; act on each once."""
        with one_thread():
            for k in self.pending:
                self.landed(k, self.params[k])
                self.params[k].grad = None
        self.pending.clear()

    def landed(self, k: int, p: torch.Tensor) -> None:
        if k != self.head and (k in self.moves) == self.first_pass:   # moved already / put back already
            raise _GradientInParts(k)
        if k == self.head:
            self.embedding_part(p, p.grad)
        elif self.first_pass:
            self.move(k, p)
        else:
            self.score(k, p)

    def move(self, k: int, p: torch.Tensor) -> None:
        """Pass 1: Δw_k from g0_k, encoded, and w_k moved to w1 in place (sharded: this rank's shard)."""
        w, g0 = local(p), local(p.grad)
        if is_low_precision(w):
            self.moves[k] = apply_low(w, g0, self.lr, self.decays[k], k, self.buffers(w))
        else:
            top = None if self.tops is None else self.tops[k]
            self.moves[k] = start_move(w, self.lr, self.decays[k], self.buffers(w), g0, k, top=top)
            apply_code(w, self.moves[k], self.buffers(w))

    def score(self, k: int, p: torch.Tensor) -> None:
        """Pass 2: I_k = −Σ Δw·g1 (eq. 7), and w0 put back bit for bit (sharded: this rank's part of the sum)."""
        move, w, g1 = self.moves.pop(k), local(p), local(p.grad)
        if is_low_precision(w):
            self.importance[k] = -undo_low(w, g1, move, self.buffers(w))
        else:
            self.importance[k] = -float(dot_code(move, g1, self.buffers(w)))
            undo_code(w, move, self.buffers(w))

    def put_back_the_rest(self) -> None:
        """After an error, or for a tensor that got no g1: every moved tensor back at w0."""
        for k, move in list(self.moves.items()):
            p = local(self.params[k])
            if not move.moved:
                continue                                          # encoded (or begun) but never moved
            if is_low_precision(p):
                undo_low(p, None, move, self.buffers(p))
            else:
                if move.partial is not None:
                    self.importance[k] = -float(move.partial)
                undo_code(p, move, self.buffers(p))
        self.moves.clear()
        self.scratch.clear()

    # -- the output head, a block of rows at a time ---------------------------------------------------------------
    def head_sink(self, start: Optional[int], rows_grad: Optional[torch.Tensor]) -> None:
        """The head's gradient, a block of rows at a time (start None: the last block has come)."""
        if self.head is None:
            return
        with one_thread():
            if self.first_pass:
                self.head_block_first(start, rows_grad)
            else:
                self.head_block_second(start, rows_grad)

    def head_block_first(self, start: Optional[int], rows_grad: Optional[torch.Tensor]) -> None:
        head = self.head
        p = self.params[head]
        s = self.buffers(p)
        move = self.moves.get(head)
        if move is None:
            self.moves[head] = move = start_move(p, self.lr, self.decays[head], s, None, head)
            shared = self.head_rows if self.embedding is not None else None
            self.head_held = None if shared is None else torch.zeros(
                (shared.numel(), p.shape[1]), dtype=torch.float32, device=p.device)
        if start is None:                                         # W's gradient complete: encoded
            move.encoded, move.parts = True, 1
            if self.embedding is None:                            # untied: nothing else will come
                apply_code(p, move, s)
                move.parts = 0
            return
        end = start + rows_grad.shape[0]
        encode(move.code.view(p.shape)[start:end], torch.empty(rows_grad.shape, device=p.device),
                p.detach()[start:end], rows_grad, self.decays[head], move.top, move.generator)
        if self.head_held is not None:                            # rows the embedding's gradient also reaches
            rows = self.head_rows
            mine = (rows >= start) & (rows < end)
            self.head_held[mine] = rows_grad[rows[mine] - start]

    def head_block_second(self, start: Optional[int], rows_grad: Optional[torch.Tensor]) -> None:
        p = self.params[self.head]
        move = self.moves[self.head]
        if start is None:
            move.parts += 1
            if self.embedding is None or move.parts == 2:
                self.finish_head(p, move, self.buffers(p))
            return
        x = move.code.view(p.shape)[start:start + rows_grad.shape[0]].float()
        dot = torch.dot(x.view(-1), rows_grad.reshape(-1)).double() * move.unit
        move.partial = dot if move.partial is None else move.partial + dot

    def embedding_part(self, p: torch.Tensor, grad: torch.Tensor) -> None:
        """A tied head's other part: the input embedding's gradient (its looked-up rows only), landing last."""
        head = self.head
        s = self.buffers(p)
        move = self.moves.get(head)
        if move is None or (self.first_pass and move.moved):      # a second part: put back already / moved
            raise _GradientInParts(head)
        if self.first_pass:
            rows = self.head_rows
            total = self.head_held + grad[rows].float()
            row_codes = torch.empty(total.shape, dtype=torch.int8, device=p.device)
            encode(row_codes, torch.empty(total.shape, device=p.device), p.detach()[rows], total, self.decays[head],
                    move.top, move.generator)
            move.code.view(p.shape)[rows] = row_codes             # those rows: Δw from the whole gradient
            self.head_held = None
            apply_code(p, move, s)
            move.parts = 0
        else:
            dot = dot_code(move, grad, s)
            move.partial = dot if move.partial is None else move.partial + dot
            move.parts += 1
            if move.parts == 2:
                self.finish_head(p, move, s)

    def finish_head(self, p: torch.Tensor, move: Move, s: Scratch) -> None:
        self.importance[self.head] = -float(move.partial) if move.partial is not None else 0.0
        undo_code(p, self.moves.pop(self.head), s)

    def capture_rows(self, module: nn.Module, args: tuple) -> None:
        self.head_rows = torch.unique(args[0].detach().reshape(-1))   # the rows this forward looks up
