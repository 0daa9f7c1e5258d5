"""GPU memory, one owner: what the planner (hizfo/run/plan.py), the Slurm pre-flight (hizfo/run/plan_slurm.py) and a
CUDA run's own pre-load check (hizfo/run/plan_fit.py ``check_memory_fits``) compare a predicted peak against.

A GPU sold as N GB is, as torch reports it (``get_device_properties(d).total_memory``), about 99 % of N GiB: the
driver keeps the rest. An H100 80GB reports about 79.19 GiB (an H100 run refused a 79.25 GiB prediction against
"the 79.2 GiB GPU", so 79.15 ≤ total < 79.25), an A100 40GB 39.59 GiB (40536 MiB). A stated size (``plan.gpu_gb``,
``hydra.callbacks.slurm_preflight.gpu_gb``, a gres type) is therefore a vendor's size, turned into torch's total
by ``REPORTED_SHARE``; a CUDA run uses the device's own total. From that total every check takes the same
``HEADROOM_GIB``: the CUDA context and cuBLAS workspace (inside total_memory, outside max_memory_allocated, the
peak the planner predicts) and the caching allocator's block rounding. A peak fits when it is at most the rest.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from hizfo.core.memory import GiB
REPORTED_SHARE = 0.9899      # torch's total_memory (GiB) per vendor GB: H100 80GB 79.19, A100 40GB 39.59 (39.60 here)
HEADROOM_GIB = 1.0           # kept free of the predicted peak on every GPU, by every check

# memory per GPU in GB as vendors state it, of the gres type names sites commonly use; a100 and v100 name their
# smaller variants (sites type the larger ones e.g. a100_80gb, v100_32g: the size in the name wins)
GPU_MEMORY_GB = {"h100": 80, "h200": 141, "gh200": 96, "a100": 40, "a800": 80, "h800": 80, "v100": 16, "v100s": 32,
                 "l40s": 48, "l40": 48, "a40": 48, "a6000": 48, "rtx6000": 24, "a10": 24, "a30": 24, "l4": 24,
                 "t4": 16, "p100": 16, "mi210": 64, "mi250": 64, "mi250x": 64, "mi300x": 192, "b200": 180}


@dataclass(frozen=True)
class Gpu:
    """One GPU's memory as torch reports it, and how many GPUs one process spreads its model over."""
    total_bytes: int
    spread: int = 1              # model.device_map=auto: the peak counted over this many GPUs (``spread_of``)

    @classmethod
    def of_size(cls, gb: float, spread: int = 1) -> "Gpu":
        """A GPU sold as ``gb`` GB (80: an H100 or A100 80GB)."""
        return cls(int(gb * REPORTED_SHARE * GiB), spread)

    @property
    def usable_bytes(self) -> int:
        return max(0, self.total_bytes - int(HEADROOM_GIB * GiB))

    def per_gpu(self, peak: int) -> int:
        """The per-GPU share of a process's predicted peak (rough under device_map=auto: accelerate balances by
        layers)."""
        return -(-int(peak) // self.spread)

    def fits(self, peak: int) -> bool:
        return self.per_gpu(peak) <= self.usable_bytes

    def text(self) -> str:
        """'the 78.19 GiB usable of a 79.19 GiB GPU' (two decimals: a one-decimal 79.2 hid a 0.05 GiB miss)."""
        return (f"the {self.usable_bytes / GiB:.2f} GiB usable of a {self.total_bytes / GiB:.2f} GiB GPU "
                f"({HEADROOM_GIB:.2f} GiB headroom)")


def spread_of(cfg: Any, world_size: int, gpus: int) -> int:
    """How many GPUs one process's model is spread over: ``gpus`` under ``model.device_map=auto`` in a one-process
    run, else 1 (several processes are FSDP2 ranks, one GPU each). The Slurm pre-flight and the CUDA run both ask."""
    return max(1, int(gpus)) if world_size == 1 and cfg.model.get("device_map") == "auto" else 1


def gres_memory_gb(gres: str) -> Optional[float]:
    """The smallest vendor size (GB) among the typed GPUs of a ``%G`` field; None when a GPU's type is unknown
    (or not given: ``gpu:4``)."""
    sizes = []
    for item in re.sub(r"\([^)]*\)", "", gres).split(","):
        parts = item.strip().split(":")
        if parts[0] != "gpu":
            continue
        kind = parts[1].lower() if len(parts) > 2 else ""
        named = re.search(r"(\d+)\s*g", kind)
        size = float(named.group(1)) if named else GPU_MEMORY_GB.get(re.split(r"[-_]", kind)[0])
        if size is None:
            return None
        sizes.append(size)
    return min(sizes) if sizes else None
