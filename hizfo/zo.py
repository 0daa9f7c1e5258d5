"""The one shared zeroth-order helper: seeded, in-place Gaussian perturbation that regenerates bit-identically.

    perturb_(params, seed, +eps)                 # θ ← θ + ε·u(s)               (paper eq. 2's θ')
    perturb_(params, seed, -(eps + lr * g))      # θ ← θ − ε·u − η·ĝ·u          (eqs. 2–3 fused: restore + update)

u(s) is never held whole. Every tensor is cut into fixed chunks; chunk c of tensor k draws its noise from its
own generator seeded by (s, k, c), into a small reused buffer, and is added in place. The noise is therefore the
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


def _apply_chunk(flat: torch.Tensor, start: int, stop: int, seed: int, scale: float) -> None:
    noise = _buffer(stop - start, flat.dtype, flat.device)
    noise.normal_(generator=_generator(flat.device).manual_seed(seed))   # u chunk ~ N(0, I)
    flat[start:stop].add_(noise, alpha=scale)


@torch.no_grad()
def perturb_(params: Sequence[torch.Tensor], seed: int, scale: float) -> None:
    """θ_k ← θ_k + scale·u_k(seed) for every tensor, in place; u regenerates bit-identically from ``seed``."""
    jobs = []
    for k, p in enumerate(params):
        flat = p.data.view(-1)
        step = CHUNK_CUDA if flat.is_cuda else CHUNK_CPU
        for c, start in enumerate(range(0, flat.numel(), step)):
            jobs.append((flat, start, min(start + step, flat.numel()), chunk_seed(seed, k, c)))
    if not jobs:
        return
    if jobs[0][0].is_cuda or len(jobs) == 1:
        for flat, start, stop, s in jobs:
            _apply_chunk(flat, start, stop, s, scale)
        return
    # CPU: one thread per core, each running single-threaded kernels on its own chunks
    previous = torch.get_num_threads()
    workers = _executor()._max_workers
    try:
        if workers > 1:
            torch.set_num_threads(1)
        list(_executor().map(lambda job: _apply_chunk(job[0], job[1], job[2], job[3], scale), jobs))
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
