"""``num_threads``: how many CPU threads torch uses, set before the model loads and recorded in provenance.

``num_threads=null`` (the default) means the CPUs this process may use: ``OMP_NUM_THREADS`` when the user set it
(an explicit request for this process), else Slurm's ``SLURM_CPUS_PER_TASK`` inside a Slurm job, else the CPUs in
this process's affinity mask (``os.sched_getaffinity``, which honours taskset and cgroup cpusets, unlike
``os.cpu_count``). More threads than CPUs make every OpenMP barrier spin against another job's threads.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from hizfo.errors import ConfigError


def _positive_int(value: Optional[str]) -> Optional[int]:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if number >= 1 else None


def available_cpus() -> tuple[int, str]:
    """The CPUs this process may use, and where that number came from."""
    for variable in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        number = _positive_int(os.environ.get(variable))
        if number is not None:
            return number, variable
    try:
        return len(os.sched_getaffinity(0)), "sched_getaffinity"
    except AttributeError:                                  # macOS and Windows have no affinity mask
        return os.cpu_count() or 1, "cpu_count"


def resolve_num_threads(requested: Optional[int]) -> int:
    """``requested`` when it is >= 1; the available CPUs when it is None."""
    if requested is None:
        return available_cpus()[0]
    if requested < 1:
        raise ConfigError(f"num_threads: must be >= 1, or null for the CPUs this process may use, got {requested}")
    cpus = usable_cpus()
    if requested > cpus:      # more threads than CPUs only spin (and 100000 would exhaust the host's process table)
        raise ConfigError(f"num_threads: must be <= {cpus}, the CPUs this process may use, got {requested}; "
                          f"or null for all of them")
    return int(requested)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; ``os.cpu_count`` where there is none): the cap on
    ``num_threads``, whatever ``OMP_NUM_THREADS`` asks."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def apply_num_threads(requested: Optional[int]) -> int:
    """``torch.set_num_threads`` with the resolved number; returns it (the record keeps it in provenance)."""
    number = resolve_num_threads(requested)
    torch.set_num_threads(number)
    return number
