"""Meters: wall-clock, peak memory (CUDA allocator, or peak resident memory on CPU), passes counted."""
from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from hizfo.core.device import synchronize  # noqa: F401  (also imported from here)

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _vm_hwm_bytes() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class Meters:
    """Costs of one run. ``train_seconds`` includes set-up (profiling, selection); evaluation is apart."""
    train_seconds: float = 0.0
    setup_seconds: float = 0.0
    eval_seconds: float = 0.0
    n_forward: int = 0
    n_backward: int = 0
    steps: int = 0
    peak_memory_bytes: int = 0
    memory_kind: str = ""
    segments: int = 1                    # processes that ran this training (1 + the number of resumes)
    _open: dict[str, float] = field(default_factory=dict, repr=False)   # timers running now: field -> start

    TIMES = ("train_seconds", "setup_seconds", "eval_seconds")

    def reset_peak(self, device: torch.device) -> None:
        """Start a fresh peak: CUDA's allocator counter, or Linux's VmHWM (echo 5 > clear_refs)."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self.memory_kind = "cuda_max_allocated"
            return
        try:
            _CLEAR_REFS.write_text("5")
            self.memory_kind = "cpu_peak_rss"
        except OSError:
            self.memory_kind = "cpu_peak_rss_since_process_start"

    def read_peak(self, device: torch.device) -> int:
        """The peak since ``reset_peak`` (kept as the maximum over repeated readings)."""
        if device.type == "cuda":
            value = torch.cuda.max_memory_allocated(device)
        else:
            value = _vm_hwm_bytes() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak_memory_bytes = max(self.peak_memory_bytes, int(value))
        return self.peak_memory_bytes

    @contextmanager
    def timing(self, field_name: str, device: torch.device) -> Iterator[None]:
        """Add the wall-clock of the block to ``field_name`` (CUDA is synchronised at both ends)."""
        synchronize(device)
        start = time.perf_counter()
        self._open[field_name] = start
        try:
            yield
        finally:
            synchronize(device)
            del self._open[field_name]
            setattr(self, field_name, getattr(self, field_name) + time.perf_counter() - start)

    @contextmanager
    def outside_peak(self) -> Iterator[None]:
        """A block whose memory is not the run's (the serialisation buffers of a checkpoint a default run keeps until
        its record is written): on CPU the peak so far is read before it and the high-water mark cleared after, so
        the block reaches no later reading. CUDA's counter is left alone (the block allocates on the CPU)."""
        cpu = self.memory_kind.startswith("cpu")
        if cpu:
            self.read_peak(torch.device("cpu"))
        try:
            yield
        finally:
            if cpu:
                self.reset_peak(torch.device("cpu"))

    @contextmanager
    def paused(self, field_name: str, device: torch.device) -> Iterator[None]:
        """Leave the wall-clock of the block out of a running ``timing`` (evaluation inside training)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, field_name, getattr(self, field_name) - (time.perf_counter() - start))

    def state_dict(self) -> dict[str, float | int | str]:
        """The costs so far, running timers included up to now (a checkpoint taken mid-training)."""
        now = time.perf_counter()
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        for name, start in self._open.items():
            state[name] += now - start
        return state

    def load_state_dict(self, state: dict) -> None:
        """Resume: times add up over the processes, counts continue, the peak is the larger one."""
        for name in self.TIMES:
            setattr(self, name, getattr(self, name) + float(state.get(name, 0.0)))
        for name in ("n_forward", "n_backward", "steps"):
            setattr(self, name, int(state.get(name, 0)))
        self.peak_memory_bytes = max(self.peak_memory_bytes, int(state.get("peak_memory_bytes", 0)))
        self.segments = int(state.get("segments", 1)) + 1
