"""The one shared zeroth-order helper: seeded, in-place Gaussian perturbation that regenerates bit-identically.

    perturb_(params, seed, +eps)                 # θ ← θ + ε·u(s)               (paper eq. 2's θ')
    perturb_(params, seed, -(eps + lr * g))      # θ ← θ − ε·u − η·ĝ·u          (eqs. 2–3 fused: restore + update)

u(s) is never held whole. The tensors, laid end to end, are cut into fixed chunks; chunk c draws its noise from
its own generator seeded by (s, c), into a small reused buffer, and is added in place (one fused foreach add
where a chunk spans several small tensors). The noise is therefore the
same however the chunks are scheduled, so on CPU the chunks run on all cores in parallel, and a pass costs one
Gaussian fill of Θ plus one fused add, with no full-size temporary.

What the noise of an element depends on: the step seed s, the ordered list of ZO tensors that the config fixes
(their sizes, and their dtypes and device type, which split the concatenation into groups and set the chunk
length), and the element's index in its tensor. Never on the world size or on how the tensors are sharded: the
chunks are cut over the whole tensors' concatenation, so a process holding only a piece of each tensor (FSDP2's
Shard(0) DTensors: rows [a, b), a contiguous flat range) fills every chunk it touches at its full length and
adds only the slice that falls in its piece (``perturb_shards_``; ``pieces_of`` reads the pieces off DTensors, and
``perturb_`` takes DTensors as they are). The ranks' noise, laid side by side, is the one-process noise bit for
bit, with one chunk-sized buffer per thread. Deliberate deviation from noise keyed by tensor name: the key stays
the offset in the concatenation, so every existing run keeps its noise bit for bit; the price is that adding or
reordering ZO tensors changes the noise of the tensors after them. ``ZOParams``' bf16 mode draws per tensor
(below) and takes whole tensors only.

The methods (MeZO, Hi-ZFO, Bilevel-ZOFO) go through ``ZOParams``: ``perturb(seed, ±ε)`` and ``restore(update)``.
On fp32 weights those are exactly the ``perturb_`` passes above. On bf16 weights (precision=bf16) a perturbation
is applied inside the forwards instead of written, so θ comes back bit for bit (see ``ZOParams``).
"""
from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from hizfo.core.precision import is_low_precision, round_to

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
    # keyed by the FakeTensorMode in force too (None outside one): a buffer made in a planner's trace is a FakeTensor,
    # and reused outside it the noise written into it would be lost without an error (or in another trace, refused)
    key = (dtype, device, getattr(torch.empty(0, dtype=dtype, device=device), "fake_mode", None))
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    buf = bufs.get(key)
    if buf is None or buf.numel() < numel:
        with torch.inference_mode(False):            # a buffer made under inference mode could not be reused outside
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


@dataclass(frozen=True)
class Piece:
    """The part of one ZO tensor a process holds: ``local`` (1-D, written in place) is elements
    [offset, offset + local.numel()) of the whole tensor flattened, which has ``numel`` elements."""
    local: torch.Tensor
    numel: int
    offset: int = 0


def pieces_of(params: Sequence[torch.Tensor]) -> list[Piece]:
    """Each tensor's ``Piece``: a plain tensor is whole; a DTensor gives its local shard and the shard's flat offset.

    A DTensor may be sharded on dim 0 only (FSDP2's Shard(0), uneven or empty last shards included; Replicate
    dims too), so that its local rows are one contiguous range of the flattened whole tensor.
    """
    out = []
    for p in params:
        data = p.data
        if type(data) is torch.Tensor:
            out.append(Piece(data.view(-1), data.numel()))
            continue
        from torch.distributed.tensor import DTensor, Replicate, Shard
        if not isinstance(data, DTensor):
            out.append(Piece(data.view(-1), data.numel()))
            continue
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
        if not all(isinstance(q, Replicate) or (type(q) is Shard and q.dim == 0) for q in data.placements):
            raise ValueError(f"zo: a DTensor placed as {data.placements} does not hold a contiguous range of its "
                             "tensor; ZO noise takes Shard(0) and Replicate placements only")
        local = data.to_local()
        shape, start = compute_local_shape_and_global_offset(data.shape, data.device_mesh, data.placements)
        if tuple(local.shape) != tuple(shape):
            raise ValueError(f"zo: a DTensor's local shard is {tuple(local.shape)}, its placements say {shape}")
        row = math.prod(data.shape[1:])
        out.append(Piece(local.view(-1), data.numel(), start[0] * row if start else 0))
    return out


_Slices = list[tuple[torch.Tensor, int, int]]


def _plan(pieces: Sequence[Piece]) -> list[tuple[int, int, bool, _Slices]]:
    """Chunks over the virtual concatenation of the whole tensors (one run per device and dtype), where the local
    pieces touch them.

    Returns ``[(chunk_seed_index, chunk_length, spans_several_tensors, [(local_slice, buf_start, buf_stop), ...])]``:
    a chunk may span many small tensors, so a pass is a few large noise fills instead of one per tensor. The
    chunks, their lengths and their seeds are those of the whole tensors, whatever pieces are held.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[Piece]] = {}
    for piece in pieces:
        if piece.offset < 0 or piece.offset + piece.local.numel() > piece.numel:
            raise ValueError(f"zo: a piece of {piece.local.numel()} elements at offset {piece.offset} "
                             f"does not fit in a tensor of {piece.numel}")
        groups.setdefault((piece.local.device, piece.local.dtype), []).append(piece)
    plan = []
    for g, ((device, _), members) in enumerate(groups.items()):
        step = CHUNK_CUDA if device.type == "cuda" else CHUNK_CPU
        total = sum(m.numel for m in members)
        chunks: dict[int, _Slices] = {}
        several: set[int] = set()          # chunks that some tensor starts inside of
        start = 0
        for m in members:
            if m.numel and start % step:
                several.add(start // step)
            lo = start + m.offset
            position, hi = lo, lo + m.local.numel()
            while position < hi:
                c = position // step
                stop = min(hi, (c + 1) * step)
                chunks.setdefault(c, []).append((m.local[position - lo:stop - lo], position - c * step,
                                                 stop - c * step))
                position = stop
            start += m.numel
        for c, slices in chunks.items():   # ascending: the members are walked in order
            plan.append(((g << 32) | c, min(step, total - c * step), c in several, slices))
    return plan


def _apply_chunk(length: int, several: bool, pieces: _Slices, seed: int, scale: float) -> None:
    first = pieces[0][0]
    noise = _buffer(length, first.dtype, first.device)     # the chunk's full length, however little is held
    noise.normal_(generator=_generator(first.device).manual_seed(seed))   # u chunk ~ N(0, I)
    if not several:                  # the kernel the whole tensors' pass uses on this chunk, whatever is held
        first.add_(noise[pieces[0][1]:pieces[0][2]], alpha=scale)
    else:
        torch._foreach_add_([t for t, _, _ in pieces], [noise[a:b] for _, a, b in pieces], alpha=scale)


@torch.no_grad()
def perturb_(params: Sequence[torch.Tensor], seed: int, scale: float) -> None:
    """θ ← θ + scale·u(seed) for every tensor, in place; u regenerates bit-identically from ``seed``

    as long as the same tensors are passed in the same order (same shapes, dtypes and devices). DTensors sharded
    on dim 0 get their shard of the noise the whole tensors get (``pieces_of``).
    """
    perturb_shards_(pieces_of(params), seed, scale)


@torch.no_grad()
def perturb_shards_(pieces: Sequence[Piece], seed: int, scale: float) -> None:
    """piece.local ← piece.local + scale·(its slice of u(seed) of the whole tensors), for every piece, in place."""
    plan = [(length, several, slices, chunk_seed(seed, index >> 32, index & 0xFFFFFFFF))
            for index, length, several, slices in _plan(pieces)]
    if not plan:
        return
    if plan[0][2][0][0].is_cuda or len(plan) == 1:
        for job in plan:
            _apply_chunk(*job, scale)
        return
    # CPU: one thread per core, each running single-threaded kernels on its own chunks
    previous = torch.get_num_threads()
    workers = _executor()._max_workers
    try:
        if workers > 1:
            torch.set_num_threads(1)
        list(_executor().map(lambda job: _apply_chunk(*job, scale), plan))
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


# ---------------------------------------------------------------------------------------------------
# Θ_ZO of one method: perturbations that come back exactly, in every precision


_VIRTUAL = 0x7A0000          # tensor-index salt of the per-tensor noise streams of ZOParams' virtual mode
_ROUNDING = 0x5A17           # seed salt of the stochastic rounding of virtual-mode updates


@dataclass(frozen=True)
class _Saved:
    """What autograd keeps instead of a perturbed temporary weight: enough to rebuild it bit for bit."""
    index: int
    seed: int
    offset: float
    shape: torch.Size
    stride: tuple[int, ...]
    storage_offset: int


class ZOParams:
    """The tensors a ZO method perturbs, and the two moves it makes with them (MeZO, Hi-ZFO, Bilevel-ZOFO):

        zo.perturb(seed, +ε)          θ̃ = θ + ε·u(seed)            (cumulative: MeZO's −2ε makes it θ − εu)
        zo.restore(update)            θ ← θ + update·u(seed), and the perturbation ends

    fp32 weights (precision fp32, and bf16-mixed's fp32 masters): in place through ``perturb_``; ``restore`` is
    one fused pass (−offset + update), bit-identical to the calls the methods made before.

    bf16 / fp16 weights (precision=bf16): θ + εu rounded to bf16 does not give θ back when εu is subtracted
    (MeZO's open drift problem), so a perturbation never writes θ. Each module holding a perturbed tensor swaps
    in, for the length of its own forward, a temporary θ + offset·u(seed) (computed in fp32, rounded to the
    weight's dtype, chunk by chunk); autograd's saved-tensor hooks keep a small token instead of that temporary
    and rebuild it bit-identically in the backward, so no Θ-sized temporary exists and θ is untouched however
    many perturbations come and go. ``restore`` then writes only the update, with stochastic rounding (E[θ1] =
    θ0 + update·u: an update far below bf16's spacing moves θ on average instead of vanishing); an update of 0
    leaves θ bit-identical. u here is drawn per tensor in fp32 (tensor k, chunk c seeded by (seed, k, c)), so
    each module can regenerate its own tensors' noise alone. This relies on a parameter being read inside the
    forward of a module that holds it (true of the supported families: OPT, BLOOM, Qwen2, Llama, and of peft's
    LoRA layers); tests/unit/core/test_precision.py checks the losses against an in-place perturbation.
    """

    def __init__(self, params: Sequence[torch.Tensor], model: Optional[nn.Module] = None,
                 virtual: Optional[bool] = None) -> None:
        self.params = list(params)
        self.virtual = any(is_low_precision(p) for p in self.params) if virtual is None else virtual
        self.seed: Optional[int] = None
        self.offset = 0.0
        self._live: dict[int, tuple[int, int, float]] = {}
        self._open: dict[nn.Module, list] = {}
        self._handles: list = []
        if not self.virtual or not self.params:
            return
        if model is None:
            raise ValueError("ZOParams: low-precision weights are perturbed inside the model's forwards; pass model")
        index = {id(p): k for k, p in enumerate(self.params)}
        slots: dict[nn.Module, list[tuple[str, int]]] = {}
        for module in model.modules():
            for name, q in module._parameters.items():
                if q is not None and id(q) in index:
                    slots.setdefault(module, []).append((name, index[id(q)]))
        found = {k for entries in slots.values() for _, k in entries}
        if len(found) != len(self.params):
            raise ValueError("ZOParams: some tensors belong to no module of the model")
        for module, entries in slots.items():
            self._handles.append(module.register_forward_pre_hook(self._swap_in(entries)))
            self._handles.append(module.register_forward_hook(self._swap_out, always_call=True))

    # -- the two moves --------------------------------------------------------------------------------
    def perturb(self, seed: int, scale: float) -> None:
        """θ̃ ← θ̃ + scale·u(seed) (in place, or in the forwards from now on)."""
        if self.seed is not None and seed != self.seed:
            raise RuntimeError("ZOParams: the previous perturbation was not restored")
        self.seed = seed
        self.offset += scale
        if not self.virtual and scale:
            perturb_(self.params, seed, scale)

    def restore(self, update: float = 0.0) -> None:
        """End the perturbation; θ ← θ + update·u(seed) (the ZO-SGD step, eq. 3, when update = −η·ĝ)."""
        if self.seed is None:
            if update:
                raise RuntimeError("ZOParams: restore(update) without a perturbation names no u")
            return
        seed, offset = self.seed, self.offset
        self.seed, self.offset = None, 0.0
        if not self.virtual:
            if update - offset:
                perturb_(self.params, seed, update - offset)          # restore and update fused: one pass
            return
        for stack in list(self._open.values()):                       # a forward that never finished
            for saving, swapped in reversed(stack):
                for module, name, k, _ in swapped:
                    module._parameters[name] = self.params[k]
                saving.__exit__(None, None, None)
        self._open.clear()
        self._live.clear()
        if update:
            self._write(self.params, seed, update)

    def noise_into(self, buffers: Sequence[torch.Tensor], seed: int, scale: float) -> None:
        """buffers[k] += scale·u_k(seed), with the u these tensors are perturbed along (e.g. a ZO gradient)."""
        if not self.virtual:
            perturb_(buffers, seed, scale)
            return
        with torch.no_grad():
            for k, buf in enumerate(buffers):
                flat = buf.view(-1)
                for _, a, noise in self._pieces(k, seed, flat):
                    n = noise.numel()
                    flat[a:a + n] = flat[a:a + n].to(torch.float32, copy=True).add_(noise, alpha=scale)

    def noise(self, seed: int) -> list[torch.Tensor]:
        """u(seed) materialised in fp32, tensor by tensor (tests and analysis: Θ-sized)."""
        if not self.virtual:
            return [u.float() for u in noise_like(self.params, seed)]
        out = [torch.zeros(p.shape, dtype=torch.float32, device=p.device) for p in self.params]
        self.noise_into(out, seed, 1.0)
        return out

    def decay(self, params: Sequence[torch.Tensor], factor: float, seed: int) -> None:
        """θ ← factor·θ (decoupled weight decay), stochastically rounded for low-precision tensors."""
        if factor == 1.0 or not params:
            return
        high = [p for p in params if not is_low_precision(p)]
        decay_(high, factor)
        with torch.no_grad():
            for j, p in enumerate(params):
                if not is_low_precision(p):
                    continue
                flat = p.data.view(-1)
                for c, a in enumerate(range(0, flat.numel(), CHUNK_CPU)):
                    piece = flat[a:a + CHUNK_CPU]
                    gen = _generator(p.device).manual_seed(chunk_seed(seed ^ _ROUNDING, _VIRTUAL + j, c))
                    piece.copy_(round_to(piece.to(torch.float32, copy=True).mul_(factor), p.dtype, gen))

    def remove(self) -> None:
        """Take the forward hooks off the model."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # -- virtual mode --------------------------------------------------------------------------------
    def _pieces(self, k: int, seed: int, flat: torch.Tensor):
        """(chunk, start, u chunk in fp32) over tensor k: each chunk from its own generator."""
        step = CHUNK_CUDA if flat.is_cuda else CHUNK_CPU
        for c, a in enumerate(range(0, flat.numel(), step)):
            n = min(step, flat.numel() - a)
            noise = _buffer(n, torch.float32, flat.device)
            noise.normal_(generator=_generator(flat.device).manual_seed(chunk_seed(seed, _VIRTUAL + k, c)))
            yield c, a, noise

    @torch.no_grad()
    def _shifted(self, k: int, seed: int, offset: float) -> torch.Tensor:
        """A new tensor θ_k + offset·u_k(seed), rounded to θ_k's dtype (the same bits every time)."""
        p = self.params[k]
        out = torch.empty_like(p)
        src, dst = p.detach().reshape(-1), out.view(-1)
        for _, a, noise in self._pieces(k, seed, src):
            n = noise.numel()
            dst[a:a + n] = src[a:a + n].to(torch.float32, copy=True).add_(noise, alpha=offset)
        return out

    @torch.no_grad()
    def _write(self, params: Sequence[torch.Tensor], seed: int, update: float) -> None:
        """θ_k ← SR(θ_k + update·u_k(seed)) in place, chunk by chunk."""
        for k, p in enumerate(params):
            flat = p.data.view(-1)
            for c, a, noise in self._pieces(k, seed, flat):
                n = noise.numel()
                gen = _generator(p.device).manual_seed(chunk_seed(seed ^ _ROUNDING, _VIRTUAL + k, c))
                moved = flat[a:a + n].to(torch.float32, copy=True).add_(noise, alpha=update)
                flat[a:a + n] = round_to(moved, p.dtype, gen)

    def _swap_in(self, entries: list[tuple[str, int]]):
        def hook(module: nn.Module, args: tuple) -> None:
            if self.seed is None or self.offset == 0.0:
                return
            saving = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
            saving.__enter__()
            swapped = []
            for name, k in entries:
                temp = self._shifted(k, self.seed, self.offset)
                self._live[temp.untyped_storage().data_ptr()] = (k, self.seed, self.offset)
                module._parameters[name] = temp
                swapped.append((module, name, k, temp))
            self._open.setdefault(module, []).append((saving, swapped))
        return hook

    def _swap_out(self, module: nn.Module, args: tuple, output: object) -> None:
        stack = self._open.get(module)
        if not stack:
            return
        saving, swapped = stack.pop()
        if not stack:
            del self._open[module]
        for mod, name, k, temp in swapped:
            mod._parameters[name] = self.params[k]
            self._live.pop(temp.untyped_storage().data_ptr(), None)
        saving.__exit__(None, None, None)

    def _pack(self, t: torch.Tensor) -> object:
        try:
            entry = self._live.get(t.untyped_storage().data_ptr())
        except (RuntimeError, NotImplementedError):
            return t
        if entry is None:
            return t
        return _Saved(*entry, t.shape, t.stride(), t.storage_offset())

    def _unpack(self, saved: object) -> torch.Tensor:
        if isinstance(saved, _Saved):
            base = self._shifted(saved.index, saved.seed, saved.offset)
            return base.as_strided(saved.shape, saved.stride, saved.storage_offset)
        return saved  # type: ignore[return-value]
