"""The one shared zeroth-order helper: seeded, in-place Gaussian perturbation that regenerates bit-identically.

    perturb_(params, seed, +eps)                 # θ ← θ + ε·u(s)               (paper eq. 2's θ')
    perturb_(params, seed, -(eps + lr * g))      # θ ← θ − ε·u − η·ĝ·u          (eqs. 2–3 fused: restore + update)

u(s) is never held whole. The tensors, laid end to end, are cut into fixed chunks; chunk c draws its noise from
its own generator seeded by (s, c), into a small reused buffer, and is added in place (one fused foreach add
where a chunk spans several small tensors). The noise is therefore the
same however the chunks are scheduled, so on CPU the chunks run on all cores in parallel, and a pass costs one
Gaussian fill of Θ plus one fused add, with no full-size temporary.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import torch

CHUNK_CPU = 1 << 20     # elements per noise chunk on CPU (4 MiB of fp32)
CHUNK_CUDA = 1 << 24    # on CUDA: few, large launches
_MASK = (1 << 63) - 1

_pool: Optional[ThreadPoolExecutor] = None
_local = threading.local()


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=max(1, min(os.cpu_count() or 1, torch.get_num_threads())))
    return _pool


def chunk_seed(seed: int, tensor_index: int, chunk_index: int) -> int:
    """A 63-bit seed for one chunk, mixed so neighbouring chunks get unrelated streams (splitmix64)."""
    z = (seed * 0x9E3779B97F4A7C15 + tensor_index * 0xBF58476D1CE4E5B9 + chunk_index * 0x94D049BB133111EB) & ((1 << 64) - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) & _MASK


def _buffer(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (dtype, device)
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    buf = bufs.get(key)
    if buf is None or buf.numel() < numel:
        buf = bufs[key] = torch.empty(numel, dtype=dtype, device=device)
    return buf[:numel]


def _generator(device: torch.device) -> torch.Generator:
    gens = getattr(_local, "gens", None)
    if gens is None:
        gens = _local.gens = {}
    gen = gens.get(device)
    if gen is None:
        gen = gens[device] = torch.Generator(device=device)
    return gen


def _plan(params: Sequence[torch.Tensor]) -> list[tuple[int, list[tuple[torch.Tensor, int, int]]]]:
    """Chunks over the virtual concatenation of the tensors (one run per device and dtype).

    Returns ``[(chunk_seed_index, [(param_slice, buf_start, buf_stop), ...]), ...]``: a chunk may span many
    small tensors, so a pass is a few large noise fills instead of one per tensor.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for p in params:
        groups.setdefault((p.device, p.dtype), []).append(p.data.view(-1))
    plan = []
    for g, ((device, _), flats) in enumerate(groups.items()):
        step = CHUNK_CUDA if device.type == "cuda" else CHUNK_CPU
        chunk, pieces, filled = 0, [], 0
        for flat in flats:
            offset = 0
            while offset < flat.numel():
                take = min(step - filled, flat.numel() - offset)
                pieces.append((flat[offset:offset + take], filled, filled + take))
                offset += take
                filled += take
                if filled == step:
                    plan.append(((g << 32) | chunk, pieces))
                    chunk, pieces, filled = chunk + 1, [], 0
        if pieces:
            plan.append(((g << 32) | chunk, pieces))
    return plan


def _apply_chunk(pieces: list[tuple[torch.Tensor, int, int]], seed: int, scale: float) -> None:
    first = pieces[0][0]
    noise = _buffer(pieces[-1][2], first.dtype, first.device)
    noise.normal_(generator=_generator(first.device).manual_seed(seed))   # u chunk ~ N(0, I)
    if len(pieces) == 1:
        first.add_(noise, alpha=scale)
    else:
        torch._foreach_add_([t for t, _, _ in pieces], [noise[a:b] for _, a, b in pieces], alpha=scale)


@torch.no_grad()
def perturb_(params: Sequence[torch.Tensor], seed: int, scale: float) -> None:
    """θ ← θ + scale·u(seed) for every tensor, in place; u regenerates bit-identically from ``seed``

    as long as the same tensors are passed in the same order (same shapes, dtypes and devices).
    """
    plan = [(pieces, chunk_seed(seed, index >> 32, index & 0xFFFFFFFF)) for index, pieces in _plan(params)]
    if not plan:
        return
    if plan[0][0][0][0].is_cuda or len(plan) == 1:
        for pieces, s in plan:
            _apply_chunk(pieces, s, scale)
        return
    # CPU: one thread per core, each running single-threaded kernels on its own chunks
    previous = torch.get_num_threads()
    workers = _executor()._max_workers
    try:
        if workers > 1:
            torch.set_num_threads(1)
        list(_executor().map(lambda job: _apply_chunk(job[0], job[1], scale), plan))
    finally:
        torch.set_num_threads(previous)


@torch.no_grad()
def noise_like(params: Sequence[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """u(seed) materialised, tensor by tensor (tests and analysis only: it allocates Θ-sized memory)."""
    out = [torch.zeros_like(p) for p in params]
    perturb_(out, seed, 1.0)
    return out


@torch.no_grad()
def decay_(params: Sequence[torch.Tensor], factor: float) -> None:
    """θ ← factor·θ in place (decoupled weight decay for ZO-SGD, e.g. MeZO's lr·wd term)."""
    if factor != 1.0 and params:
        torch._foreach_mul_([p.data for p in params], factor)


def draw_seed(generator: torch.Generator) -> int:
    """A step seed from the run's generator (recorded, so a run replays exactly)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())
