"""AdamW's probe step Δw (profiling's pass 1), kept between the passes in one byte per element, applied to the
weights in place and undone bit for bit (pass 2). The encoding and its error bounds: hizfo/core/profiling.py's
module docstring; the importance that uses it: ``hizfo.core.profiling.tensor_importance``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch

from hizfo.core.precision import from_ordinal, ordinal, round_to

CHUNK_CPU = 1 << 18          # elements per piece of elementwise work: scratch stays ~1 MiB per buffer
CHUNK_CUDA = 1 << 22
ADAM_EPS = 1e-8              # torch.optim.AdamW's default eps (hizfo.core.methods.adamw leaves it at the default)
SR_SEED = 0x51A7E           # stochastic rounding of the probe step on bf16 weights: fixed, so profiling replays
DITHER_SEED = 0xD17E0       # stochastic rounding of the fp32 weights' codes where λ > 0: fixed, so profiling replays


class Scratch:
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
class Move:
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
def one_thread() -> Iterator[None]:
    """Elementwise chunk work on one CPU thread: it is memory-bound, and on a busy machine every multi-threaded
    kernel waits at its barrier for a descheduled thread (hundreds of small kernels per tensor made profiling
    10× slower on the shared 2-core box)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def chunks(n: int, scratch: Scratch):
    return enumerate(range(0, n, scratch.size))


def encode(code: torch.Tensor, x: torch.Tensor, w0: torch.Tensor, g0: torch.Tensor, decay: float,
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


def code_top(flat: torch.Tensor, decay: float, scratch: Scratch) -> torch.Tensor:
    """1 + λ·max|w0| ≥ max|Δw/η| (|g0|/(|g0| + eps) < 1): the code's full scale, from w0 alone."""
    top = torch.ones((), device=flat.device)
    if decay:
        for _, a in chunks(flat.numel(), scratch):
            piece = flat[a:a + scratch.size]
            top = torch.maximum(top, 1.0 + decay * torch.amax(torch.abs(piece, out=scratch.f[0][:piece.numel()])))
    return top


@torch.no_grad()
def start_move(p: torch.Tensor, lr: float, decay: float, scratch: Scratch,
                g0: Optional[torch.Tensor], index: int = 0, top: Optional[torch.Tensor] = None) -> Move:
    """A move for fp32 ``p``: its unit, and its code from ``g0`` when given (a tied tensor encodes in parts).
    ``top``: the code's scale when ``p`` is a shard (the whole tensor's code_top), else p's own."""
    flat = p.detach().view(-1)
    top = code_top(flat, decay, scratch) if top is None else top
    move = Move(torch.empty(flat.numel(), dtype=torch.int8, device=p.device), unit=top * (lr / 127.0), top=top)
    if decay:
        move.generator = torch.Generator(device=p.device).manual_seed(DITHER_SEED + index)
    if g0 is not None:
        encode_all(p, move, g0, decay, scratch)
    return move


def encode_all(p: torch.Tensor, move: Move, g0: torch.Tensor, decay: float, scratch: Scratch) -> None:
    flat, grad = p.detach().view(-1), g0.view(-1)
    for _, a in chunks(flat.numel(), scratch):
        w0 = flat[a:a + scratch.size]
        encode(move.code[a:a + w0.numel()], scratch.f[0][:w0.numel()], w0, grad[a:a + w0.numel()], decay,
                move.top, move.generator)
    move.encoded = True


@torch.no_grad()
def apply_code(p: torch.Tensor, move: Move, scratch: Scratch) -> None:
    """w0 → w1 = w0 + q·unit in place; keep w0 verbatim where w1 − d would not give it back."""
    flat = p.detach().view(-1)
    for c, a in chunks(flat.numel(), scratch):
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
def dot_code(move: Move, g1: torch.Tensor, scratch: Scratch) -> torch.Tensor:
    """Σ d·g1 with d = q·unit, accumulated in float64 on the device."""
    grad = g1.view(-1)
    total = torch.zeros((), dtype=torch.float64, device=g1.device)
    for _, a in chunks(grad.numel(), scratch):
        g = grad[a:a + scratch.size]
        x = scratch.f[0][:g.numel()].copy_(move.code[a:a + g.numel()])
        total += torch.dot(x, g if g.dtype == torch.float32 else g.float())
    return total * move.unit


@torch.no_grad()
def undo_code(p: torch.Tensor, move: Move, scratch: Scratch) -> None:
    """w1 → w0 bit for bit: w1 − d with the same d, then the verbatim exceptions."""
    flat = p.detach().view(-1)
    for c, a in chunks(flat.numel(), scratch):
        w1 = flat[a:a + scratch.size]
        x = scratch.f[0][:w1.numel()]
        w1.sub_(x.copy_(move.code[a:a + w1.numel()]).mul_(move.unit))
        if c in move.exceptions:
            w1[move.exceptions[c][0]] = move.exceptions[c][1]
    move.moved = False


@torch.no_grad()
def apply_low(p: torch.Tensor, g0: torch.Tensor, lr: float, decay: float, index: int,
               scratch: Scratch) -> Move:
    """bf16 / fp16 ``p``: w1 = SR(w0 + Δw) (bf16; nearest for fp16), coded as grid steps."""
    flat, grad = p.detach().view(-1), g0.view(-1)
    move = Move(torch.empty(flat.numel(), dtype=torch.int8, device=p.device))
    generator = torch.Generator(device=p.device).manual_seed(SR_SEED + index)
    for c, a in chunks(flat.numel(), scratch):
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
def undo_low(p: torch.Tensor, g1: Optional[torch.Tensor], move: Move, scratch: Scratch) -> float:
    """Put bf16 / fp16 w0 back bit for bit; return Σ (w1 − w0)·g1."""
    flat = p.detach().view(-1)
    total = torch.zeros((), dtype=torch.float64, device=p.device)
    for c, a in chunks(flat.numel(), scratch):
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
