"""ZO noise on shards (hizfo/core/zo.py): a process holding rows [a, b) of each tensor applies exactly the noise the
whole tensors get, bit for bit, and a one-process run keeps the noise it had before shards existed.

The ranks are simulated by slicing (what FSDP2's Shard(0) gives each rank: torch.chunk's rows, the last shard
short or empty); one test uses real DTensors on a one-process gloo group. Several processes with FSDP2:
tests/distributed/test_zo_shards.py.
"""
from __future__ import annotations

import hashlib
import math
import socket

import pytest
import torch

from hizfo.core import zo
from hizfo.core.zo import Piece, ZOParams, noise_like, perturb_, perturb_shards_, pieces_of

F32, F64, BF16 = torch.float32, torch.float64, torch.bfloat16
# three dtype groups, sizes across chunk boundaries, an empty tensor, tensors with fewer rows than ranks
SPECS = [((7, 5), F32), ((3,), F32), ((100,), F32), ((9, 4), F64), ((13, 11), F32), ((0, 4), F32), ((1,), F32),
         ((50,), BF16), ((64,), F32), ((2, 3, 5), F32), ((200,), F64), ((17,), BF16)]
CASES = [(64, 0), (64, 12345), (10, 2**62 - 1), (1000, 99)]     # (CHUNK_CPU, step seed)
BIG = [((37, 28343), F32), ((5,), F32)]                         # the real CHUNK_CPU: a boundary inside the first
# sha256 of the noise (and of a perturb/restore pass) as the code before shards made it (zo.py at commit
# c6f00ec), computed with that code and written down here: the one-process noise must never change
NOISE_SHA256 = "8bfd8eaa8218f6cd20d32955664a56ddf053b15ab7640c572624f549bb576858"
PERTURB_SHA256 = "4c907bf7e89cf6d199e468b755810d3c909ec4572ac2562eb26511c1a1f0d985"


def _bytes(t: torch.Tensor) -> bytes:
    return t.detach().reshape(-1).view(torch.uint8).numpy().tobytes()


def _zeros(specs) -> list[torch.Tensor]:
    return [torch.zeros(shape, dtype=dtype) for shape, dtype in specs]


def _randn(specs, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen).to(dtype) for shape, dtype in specs]


def _rows(n_rows: int, world: int, rank: int) -> tuple[int, int]:
    """Rank's rows under Shard(0) (torch.chunk: ceil(n/world) rows each, the last short, trailing ranks empty)."""
    per = math.ceil(n_rows / world) if n_rows else 0
    a = min(rank * per, n_rows)
    return a, min(a + per, n_rows)


def _shard(tensors: list[torch.Tensor], world: int, rank: int) -> list[Piece]:
    """Rank's local view of each whole tensor: a copy of its rows only, and where they start in the flat tensor."""
    out = []
    for t in tensors:
        row = math.prod(t.shape[1:])
        a, b = _rows(t.shape[0], world, rank)
        out.append(Piece(t.reshape(-1)[a * row:b * row].clone(), t.numel(), a * row))
    return out


def _gather(ranks: list[list[Piece]], tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every rank's local pieces laid side by side, tensor by tensor, in the whole tensors' shapes."""
    return [torch.cat([pieces[k].local for pieces in ranks]).view(t.shape) for k, t in enumerate(tensors)]


def test_one_process_noise_is_bit_identical_to_the_code_before_shards(monkeypatch):
    assert (zo.CHUNK_CPU, zo.CHUNK_CUDA) == (1 << 20, 1 << 24)    # the chunk lengths are part of the noise
    h = hashlib.sha256()
    for chunk, seed in CASES:
        monkeypatch.setattr(zo, "CHUNK_CPU", chunk)
        for u in noise_like(_zeros(SPECS), seed):
            h.update(_bytes(u))
    monkeypatch.undo()
    for u in noise_like(_zeros(BIG), 7):
        h.update(_bytes(u))
    assert h.hexdigest() == NOISE_SHA256


def test_one_process_perturb_and_restore_are_bit_identical_to_the_code_before_shards(monkeypatch):
    monkeypatch.setattr(zo, "CHUNK_CPU", 64)
    params = _randn(SPECS)
    perturb_(params, 12345, 1e-3)
    perturb_(params, 12345, -1.5e-3)
    h = hashlib.sha256()
    for p in params:
        h.update(_bytes(p))
    assert h.hexdigest() == PERTURB_SHA256


def test_a_shorter_gaussian_fill_is_not_a_prefix_of_a_longer_one():
    """Why a rank fills each chunk at its full length: torch's normal_ on n elements is not the first n of a fill
    of m > n (on CPU the vectorised fill works in blocks of 16), so a rank filling only its slice would drift."""
    gen = torch.Generator()
    short = torch.empty(10).normal_(generator=gen.manual_seed(3))
    long = torch.empty(20).normal_(generator=gen.manual_seed(3))
    assert not torch.equal(short, long[:10])


@pytest.mark.parametrize("chunk", [10, 64, 1000])
@pytest.mark.parametrize("world", [2, 3, 5])
def test_the_ranks_noise_laid_side_by_side_is_the_one_process_noise(monkeypatch, world, chunk):
    monkeypatch.setattr(zo, "CHUNK_CPU", chunk)
    fills: list[int] = []
    real_buffer = zo._buffer
    monkeypatch.setattr(zo, "_buffer", lambda n, dtype, device: (fills.append(n), real_buffer(n, dtype, device))[1])
    whole = noise_like(_zeros(SPECS), 4242)
    whole_fills = sorted(fills)
    fills.clear()
    ranks = []
    for rank in range(world):
        pieces = _shard(_zeros(SPECS), world, rank)             # each rank sees only its own rows
        perturb_shards_(pieces, 4242, 1.0)
        ranks.append(pieces)
    for got, want in zip(_gather(ranks, whole), whole):
        assert got.dtype == want.dtype and _bytes(got) == _bytes(want)
    assert max(fills) <= chunk                                  # one chunk-sized buffer, never a Θ-sized one
    assert set(fills) <= set(whole_fills)                       # every fill at a length the one process fills


def test_empty_and_tiny_shards_touch_nothing_outside_their_rows(monkeypatch):
    monkeypatch.setattr(zo, "CHUNK_CPU", 8)
    whole = noise_like(_zeros([((1,), F32), ((2, 3), F32), ((0,), F32), ((30,), F32)]), 5)
    last = _shard(_zeros([((1,), F32), ((2, 3), F32), ((0,), F32), ((30,), F32)]), 4, 3)
    assert [p.local.numel() for p in last] == [0, 0, 0, 6]      # rows of the first two tensors all on ranks 0, 1
    perturb_shards_(last, 5, 1.0)
    assert _bytes(last[3].local) == _bytes(whole[3].view(-1)[24:])
    perturb_shards_([Piece(torch.zeros(0), 7, 7)], 5, 1.0)        # nothing held: nothing drawn, nothing written


@pytest.mark.parametrize("world", [2, 3])
def test_perturb_then_restore_on_shards_writes_the_bytes_the_whole_tensors_get(monkeypatch, world):
    monkeypatch.setattr(zo, "CHUNK_CPU", 64)
    whole = _randn(SPECS, seed=1)
    ranks = [_shard(whole, world, rank) for rank in range(world)]
    eps, update = 1e-3, -2e-4
    perturb_(whole, 77, eps)
    for pieces in ranks:
        perturb_shards_(pieces, 77, eps)
    assert [_bytes(t) for t in _gather(ranks, whole)] == [_bytes(t) for t in whole]
    perturb_(whole, 77, update - eps)                           # restore and update fused, as ZOParams does
    for pieces in ranks:
        perturb_shards_(pieces, 77, update - eps)
    assert [_bytes(t) for t in _gather(ranks, whole)] == [_bytes(t) for t in whole]


def test_the_cpu_thread_pool_gives_the_same_shard_bytes_on_any_number_of_workers(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor
    monkeypatch.setattr(zo, "CHUNK_CPU", 16)
    results = []
    for workers in (1, 4):
        with ThreadPoolExecutor(workers) as pool:
            monkeypatch.setattr(zo, "_executor", lambda: pool)
            pieces = _shard(_randn(SPECS, seed=2), 3, 1)        # several chunks: the pool path
            perturb_shards_(pieces, 9, 0.5)
            results.append([_bytes(p.local) for p in pieces])
    assert results[0] == results[1]


def test_pieces_of_plain_tensors_are_the_whole_tensors_and_bad_pieces_are_refused():
    params = _randn(SPECS[:3])
    for p, piece in zip(params, pieces_of(params)):
        assert (piece.numel, piece.offset) == (p.numel(), 0)
        assert piece.local.data_ptr() == p.data_ptr() and piece.local.shape == (p.numel(),)
    with pytest.raises(ValueError, match="does not fit"):
        perturb_shards_([Piece(torch.zeros(4), 10, 7)], 1, 1.0)
    with pytest.raises(ValueError, match="does not fit"):
        perturb_shards_([Piece(torch.zeros(4), 10, -1)], 1, 1.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gloo_one_process():
    """A real process group of one (gloo), so real DTensors can be made; torn down after the test."""
    import torch.distributed as dist
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("needs torch.distributed and no process group already up")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def test_dtensor_parameters_get_the_noise_of_the_plain_tensors(monkeypatch, gloo_one_process):
    from torch.distributed.tensor import Shard, distribute_tensor
    monkeypatch.setattr(zo, "CHUNK_CPU", 64)
    plain = _randn(SPECS, seed=3)
    params = [torch.nn.Parameter(distribute_tensor(t.clone(), gloo_one_process, [Shard(0)]))
              if t.dim() else torch.nn.Parameter(t.clone()) for t in plain]
    assert [(p.numel, p.offset) for p in pieces_of(params)] == [(t.numel(), 0) for t in plain]
    want = noise_like(plain, 11)
    got = noise_like(params, 11)                                # zeros_like of a DTensor is a DTensor
    assert [_bytes(u.to_local()) for u in got] == [_bytes(u) for u in want]
    ZOParams(params, virtual=False).perturb(11, 1e-2)           # in place, on the local shards
    perturb_(plain, 11, 1e-2)
    assert [_bytes(p.to_local()) for p in params] == [_bytes(t) for t in plain]
    wrong = distribute_tensor(torch.zeros(4, 6), gloo_one_process, [Shard(1)])
    with pytest.raises(ValueError, match="Shard\\(0\\) and Replicate"):
        perturb_([wrong], 11, 1.0)


def test_a_noise_buffer_made_under_fake_tensors_is_not_reused_outside():
    """The planner traces ZO steps under FakeTensorMode; the noise buffer that trace caches in this thread must not
    be the one a real step writes its noise into afterwards (it was: MeZO then stopped learning after a trace)."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    from hizfo.core import zo
    for _ in range(2):                                           # two traces, each its own fake mode
        with FakeTensorMode() as mode:
            assert zo._buffer(64, torch.float32, torch.device("cpu")).fake_mode is mode
    real = zo._buffer(64, torch.float32, torch.device("cpu"))
    assert not isinstance(real, FakeTensor) and real.numel() == 64


def test_a_sweep_job_asking_another_backend_than_the_processs_group_is_one_line(monkeypatch, gloo_one_process):
    """The group lives as long as the process (a sweep under torchrun runs every job in it): a job that asks for
    another backend is refused in one line, and one that asks for the same gets the group as it is."""
    from hizfo.core import distributed
    from hizfo.errors import ConfigError
    monkeypatch.setenv("WORLD_SIZE", "2")                  # as torchrun says it; the group here is of one
    assert distributed.init("gloo").backend == "gloo"
    with pytest.raises(ConfigError, match="^backend: this process's group is gloo"):
        distributed.init("nccl")
