"""Numerics of a run: the ``precision`` key, and the bit-level tools that keep low-precision weights exact.

    precision=fp32         fp32 weights, fp32 compute (the default)
    precision=bf16-mixed   fp32 weights (the masters) and optimizer state; forwards and backwards under bf16
                           ``torch.autocast``; ZO perturbations and updates act on the fp32 weights
    precision=bf16         bf16 weights, bf16 compute, for the least memory. Two things that plain bf16 loses
                           are kept: ZO perturbations never write θ (``hizfo.core.zo.ZOParams`` applies θ + εu inside
                           each module's forward and regenerates it in the backward), so θ comes back bit for bit
                           after any number of steps; and FO updates go to fp32 masters of the FO tensors
                           (``MasterWeights``), so an AdamW step far below bf16's spacing is not rounded away.

The tools: ``ordinal``/``from_ordinal`` (a bf16 value's position on the bf16 grid, so a move on the grid can be
undone exactly in integers) and ``stochastic_round`` (fp32 → bf16, unbiased: E[SR(x)] = x).
"""
from __future__ import annotations

import contextlib
import os
import platform
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import torch
from torch.distributed.tensor import DTensor

from hizfo.errors import ConfigError

PRECISIONS = ("fp32", "bf16-mixed", "bf16")
LOW_PRECISION = (torch.bfloat16, torch.float16)


# ---------------------------------------------------------------------------------------------------
# the config key


ALLOW_EMULATED_BF16 = "HIZFO_ALLOW_EMULATED_BF16"   # =1: run bf16 modes on a CPU without native bf16 (slow)
_NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}   # x86 (AVX512-BF16, AMX) and Arm's FEAT_BF16 in cpuinfo


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (``flags`` on x86, ``Features`` on Arm); empty elsewhere."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def cpu_has_native_bf16(flags: Optional[set[str]] = None) -> bool:
    """Whether the CPU computes bf16 in hardware (else torch emulates it: correct, several times slower than fp32)."""
    if flags is None and platform.system() != "Linux":
        return False
    return bool((cpu_flags() if flags is None else flags) & _NATIVE_BF16_FLAGS)


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 runs natively on ``device`` (CPU: AVX512-BF16, AMX or Arm BF16, or emulation allowed by
    HIZFO_ALLOW_EMULATED_BF16=1, which the test suite sets; CUDA: compute capability 8.0+)."""
    if device.type == "cpu":
        return cpu_has_native_bf16() or os.environ.get(ALLOW_EMULATED_BF16) == "1"
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return False


@dataclass(frozen=True)
class Precision:
    """A run's precision, made from its ``precision`` key: the weights' dtype and whether forwards autocast."""
    name: str = "fp32"

    def __post_init__(self) -> None:
        if self.name not in PRECISIONS:
            raise ConfigError(f"precision: '{self.name}' is not one of {', '.join(PRECISIONS)}")

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype the model's weights are held in: fp32 masters unless precision=bf16."""
        return torch.bfloat16 if self.name == "bf16" else torch.float32

    def compute_context(self, device: torch.device) -> contextlib.AbstractContextManager:
        """bf16 autocast for bf16-mixed (forwards; their backwards follow the recorded dtypes), else nothing. A
        forward entered without grad (a ZO loss) keeps no cache of its weight casts: autocast would hold a bf16 copy of
        every weight that requires grad until the forward ends (MemTracker on OPT-125m MeZO: +236 MiB, a third of
        the step's peak), and a forward with no backward never reuses one. The casts are the same either way."""
        if self.name == "bf16-mixed":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=torch.is_grad_enabled())
        return contextlib.nullcontext()


def check_precision(precision: str, device: torch.device) -> None:
    """One clear line for a value outside PRECISIONS, or a bf16 mode on a device without bf16."""
    Precision(precision)
    if precision != "fp32" and not bf16_supported(device):
        extra = f", or set {ALLOW_EMULATED_BF16}=1 to emulate it, slowly" if device.type == "cpu" else ""
        raise ConfigError(f"precision: {precision} needs bf16 support, and device {device} has none "
                          f"(use precision=fp32{extra})")


def weight_dtype(precision: str) -> torch.dtype:
    """The dtype the model's weights are held in for the ``precision`` key (``Precision.weight_dtype``)."""
    return Precision(precision).weight_dtype


# The precision of the run in progress, seen by the losses deep inside every method (``compute_context``). A context
# variable, not a module global: ``use_precision`` sets it for its block only, each thread sees its own (a new
# thread starts at fp32), and nothing of one run is left for the next.
_ACTIVE: ContextVar[Precision] = ContextVar("hizfo_precision", default=Precision())


@contextlib.contextmanager
def use_precision(precision: Union[str, Precision]) -> Iterator[Precision]:
    """Make ``precision`` the one that ``compute_context`` follows, for the block (a run); yields it."""
    value = precision if isinstance(precision, Precision) else Precision(precision)
    token = _ACTIVE.set(value)
    try:
        yield value
    finally:
        _ACTIVE.reset(token)


def active_precision() -> Precision:
    """The precision of the innermost ``use_precision`` block in this context (fp32 outside any)."""
    return _ACTIVE.get()


def compute_context(device: torch.device) -> contextlib.AbstractContextManager:
    """The active precision's compute context: bf16 autocast under bf16-mixed, else nothing."""
    return _ACTIVE.get().compute_context(device)


# ---------------------------------------------------------------------------------------------------
# exact bit-level tools for bf16 / fp16 tensors


def is_low_precision(t: torch.Tensor) -> bool:
    return t.dtype in LOW_PRECISION


def ordinal(t: torch.Tensor) -> torch.Tensor:
    """int32 position of each bf16/fp16 value on its grid, monotone in the value (−0 sits just below +0).

    Sign-magnitude bits b become o = b for b ≥ 0 and o = −(b + 2¹⁵) − 1 for b < 0, so moving a value k steps along
    the grid is o + k, and undoing it is exact integer arithmetic.
    """
    bits = t.view(torch.int16).to(torch.int32)
    return torch.where(bits < 0, -(bits + 32768) - 1, bits)


def from_ordinal(o: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The inverse of ``ordinal``."""
    bits = torch.where(o < 0, -(o + 1) - 32768, o)
    return bits.to(torch.int16).view(dtype)


def stochastic_round(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """fp32 → bf16 rounding up or down with probability proportional to the distance: E[SR(x)] = x.

    Adds 16 uniform random bits below bf16's mantissa and truncates (on the magnitude, so it is symmetric in the
    sign). A value already on the bf16 grid comes back unchanged whatever the random bits.
    """
    bits = x.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
    return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)


def round_to(x: torch.Tensor, dtype: torch.dtype, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """fp32 ``x`` into ``dtype``: stochastic rounding for bf16 (updates below the spacing survive on average),
    round-to-nearest otherwise."""
    if dtype == torch.bfloat16:
        return stochastic_round(x, generator)
    return x.to(dtype)


class MasterWeights:
    """fp32 masters of low-precision FO tensors (precision=bf16): the optimizer steps the masters, and the model's
    bf16 tensors are their round-to-nearest copies. A master is made from its tensor the first time the tensor
    has a gradient (GreenTrainer's unselected candidates never get one); under FSDP2, at once (4 bytes an element
    of this rank's shards of every FO tensor, the candidates' too)."""

    def __init__(self, params: Sequence[torch.Tensor]) -> None:
        self.params = list(params)
        # placeholders keep ndim, so hizfo.core.methods.no_decay sorts them as it sorts their tensors; a sharded
        # tensor's master is made at once, as a shard of its own: a plain placeholder cannot later take a DTensor
        # (``.data = dtensor`` leaves a Parameter whose storage is not the shard's; indexing it crashed the process)
        self.masters = [torch.nn.Parameter(p.detach().float()) if isinstance(p, DTensor)
                        else torch.nn.Parameter(torch.empty([0] * p.ndim, dtype=torch.float32, device=p.device))
                        for p in self.params]

    @torch.no_grad()
    def take_grads(self) -> None:
        """Each master gets its tensor's gradient (in fp32); the tensor's own gradient is freed."""
        for p, m in zip(self.params, self.masters):
            if p.grad is None:
                m.grad = None
                continue
            if m.numel() == 0:
                m.data = p.detach().float()
            m.grad = p.grad.float()
            p.grad = None

    @torch.no_grad()
    def fresh_grads(self) -> list[torch.Tensor]:
        """Zeroed fp32 gradients on every master (made from its tensor first), for a gradient written directly
        rather than taken from the tensors (Bilevel-ZOFO's ZO estimate for θ, ``hizfo.core.zo.ZOParams.noise_into``)."""
        for p, m in zip(self.params, self.masters):
            if m.numel() == 0:
                m.data = p.detach().float()
            m.grad = torch.zeros_like(m)
        return [m.grad for m in self.masters]

    @torch.no_grad()
    def publish(self, generator: Optional[torch.Generator] = None) -> None:
        """The model's tensors ← their masters: rounded to nearest, or with a ``generator`` stochastically
        (``round_to``: E[tensor] = master, one tensor's temporaries at a time)."""
        for p, m in zip(self.params, self.masters):
            if m.numel():
                p.copy_(m if generator is None else round_to(m.detach(), p.dtype, generator))

    @torch.no_grad()
    def materialize(self, masters: Sequence[torch.Tensor]) -> None:
        """The placeholders among ``masters`` made from their tensors, as a first gradient makes them: a resume
        through a distributed checkpoint loads the saved masters into them (hizfo/run/checkpoint_dist.py)."""
        wanted = {id(t) for t in masters}
        for p, m in zip(self.params, self.masters):
            if m.numel() == 0 and id(m) in wanted:
                m.data = p.detach().float()

    def state_dict(self) -> list[Optional[torch.Tensor]]:
        return [m.detach().clone() if m.numel() else None for m in self.masters]

    @torch.no_grad()
    def load_state_dict(self, state: list[Optional[torch.Tensor]]) -> None:
        for m, value in zip(self.masters, state):
            if value is None:
                continue
            if isinstance(m, DTensor):       # ``.data = dtensor`` leaves a DTensor as it was: copy into its shard
                m.copy_(value)
            else:
                m.data = value.to(device=m.device, dtype=torch.float32)


class ChangeMonitor:
    """Share of elements an update changed, bitwise, estimated on a fixed random sample of each tensor (all of a
    tensor with ≤ ``sample`` elements), weighted by the tensors' sizes: a few KiB however large the tensors."""

    def __init__(self, sample: int = 4096, seed: int = 0) -> None:
        self.sample = sample
        self.seed = seed
        self._index: dict[tuple[int, int], torch.Tensor] = {}
        self._before: list[Optional[torch.Tensor]] = []

    def _indices(self, k: int, t: torch.Tensor) -> torch.Tensor:
        key = (k, t.numel())
        if key not in self._index:
            if t.numel() <= self.sample:
                self._index[key] = torch.arange(t.numel(), device=t.device)
            else:
                g = torch.Generator().manual_seed(self.seed + k)
                self._index[key] = torch.randint(0, t.numel(), (self.sample,), generator=g).to(t.device)
        return self._index[key]

    @torch.no_grad()
    def before(self, tensors: Sequence[torch.Tensor]) -> None:
        self._before = [t.detach().reshape(-1)[self._indices(k, t)].clone() if t.numel() else None
                        for k, t in enumerate(tensors)]

    @torch.no_grad()
    def counts(self, tensors: Sequence[torch.Tensor]) -> tuple[float, float]:
        """The estimated number of elements (of the tensors sampled in ``before``) whose value changed, and the
        number of elements: sums that add up over several ranks' shards (their ratio: the changed share). The counts add up on each tensor's device and are read once per device: on CUDA
        one synchronisation per step, not one per tensor (a step of Θ_FO has hundreds of tensors)."""
        counts: dict[torch.device, torch.Tensor] = {}
        total = 0
        for k, (t, old) in enumerate(zip(tensors, self._before)):
            if old is None or t.numel() == 0:
                continue
            new = t.detach().reshape(-1)[self._indices(k, t)]
            weighted = (new != old).sum(dtype=torch.float64) * (t.numel() / new.numel())   # sample -> whole tensor
            counts[t.device] = counts[t.device] + weighted if t.device in counts else weighted
            total += t.numel()
        self._before = []
        return sum(float(c) for c in counts.values()), float(total)
