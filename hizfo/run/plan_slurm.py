"""The Slurm pre-flight's memory check: every cell of a sweep planned (hizfo/core/memory.py) against the GPU memory of
the partition's nodes, before sbatch.

GPU memory comes from ``hydra.callbacks.slurm_preflight.gpu_gb`` when set (a site key: conf/launcher/site.example.yaml),
else from the gres type of the partition's nodes (``gpu:h100:8`` → H100 → 80 GB, ``gpu:a100_80gb:4`` → 80: a size in
the type's name wins over the table); the smallest over the partition's nodes, since a job may land on any of them.
A vendor's size is compared as torch reports it, less the same headroom as the planner and the CUDA run's own check
(hizfo/run/plan_gpu.py).
A partition whose GPU type is unknown is not checked (one warning names the key to set).

How a job spreads a model over GPUs, from the launcher: ``tasks_per_node × nodes`` processes (torchrun) are a world of
that size with FSDP2 sharding (the planner's distributed layout); one process with ``gpus_per_node > 1`` and
``model.device_map=auto`` splits the model over the node's GPUs (plan_gpu.spread_of, as the CUDA run counts it:
the peak over the GPU count, rough, accelerate balances by layers); otherwise the whole run is on one GPU.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from hizfo.errors import ConfigError
from hizfo.run.plan_gpu import Gpu, gres_memory_gb, spread_of

ENFORCE_ENV = "HIZFO_PLAN_ENFORCE"


def partition_gpu_gb(nodes: list[Any], partition: Optional[str]) -> tuple[Optional[float], str]:
    """(GPU memory in GB of the partition's nodes, the gres text it came from); (None, gres) when unknown."""
    names = [p.strip() for p in str(partition).split(",")] if partition is not None else []
    pool = [n for n in nodes if n.partition in names] if names else [n for n in nodes if n.default] or nodes
    gpus = [n for n in pool if n.gpus > 0]
    if not gpus:
        return None, ""
    sizes = [gres_memory_gb(n.gres) for n in gpus]
    gres = " ".join(sorted({n.gres for n in gpus}))
    return (None, gres) if any(s is None for s in sizes) else (min(sizes), gres)     # type: ignore[type-var]


def job_layout(launcher: Any) -> tuple[int, int]:
    """(processes in the world, GPUs one process spreads a model over with device_map=auto)."""
    world = int(launcher.get("tasks_per_node") or 1) * int(launcher.get("nodes") or 1)
    return world, max(1, int(launcher.get("gpus_per_node") or 1)) if world == 1 else 1


def compose_cell(overrides: list[str]) -> Any:
    """A cell's run config (hizfo.run.session.compose, through run.py's Hydra when the pre-flight runs inside it)."""
    from hizfo.run.session import compose
    return compose(overrides)


def cell_problem(overrides: list[str], gpu: Gpu, world: int, spread: int) -> Optional[str]:
    """None when the cell fits; else one line naming it, its predicted per-GPU peak, the GPU memory and what fits
    (hizfo/run/plan_fit.py's ``fits_line``, which the CUDA run's own check asks too)."""
    from hizfo.run.plan_fit import PlanOptions, fits_line, plan_config
    cfg = compose_cell(overrides)
    shape, s, pred = plan_config(cfg, PlanOptions(world_size=world))
    return fits_line(pred, s, Gpu(gpu.total_bytes, spread_of(cfg, world, spread)), shape,
                     " ".join(overrides) or "(the default config)")


def enforced(plan_enforce: bool) -> bool:
    """The callback's ``plan_enforce`` and the ``HIZFO_PLAN_ENFORCE`` environment variable (0/false: warn only)."""
    return plan_enforce and os.environ.get(ENFORCE_ENV, "1").strip().lower() not in ("0", "false", "no")


def memory_problems(config: Any, nodes: list[Any], gpu_gb: Optional[float]) -> tuple[list[str], list[str]]:
    """(one line per cell of the sweep that cannot fit the partition's GPUs, warnings)."""
    launcher = config.hydra.launcher
    if gpu_gb is None:
        gpu_gb, gres = partition_gpu_gb(nodes, launcher.get("partition"))
        if gpu_gb is None:
            return [], ([f"memory check skipped: the GPU type of sinfo's gres '{gres}' is not known; set "
                         f"hydra.callbacks.slurm_preflight.gpu_gb=GB (conf/launcher/site.yaml)"] if gres else [])
    elif not gpu_gb > 0:
        raise ConfigError(f"hydra.callbacks.slurm_preflight.gpu_gb: must be > 0, got {gpu_gb}")
    gpu = Gpu.of_size(gpu_gb)                     # a vendor's size, as torch reports it (hizfo/run/plan_gpu.py)
    world, spread = job_layout(launcher)
    task = list(config.hydra.overrides.get("task") or [])
    from hizfo.run.plan import sweep_cells
    cells = sweep_cells(task, dict(config.hydra.sweeper.get("params") or {}))
    problems = [p for p in (cell_problem(c, gpu, world, spread) for c in cells) if p]
    if problems:
        problems.append(f"{len(problems)} of {len(cells)} cells cannot fit {gpu.text()} at world size "
                        f"{world}; {ENFORCE_ENV}=0 or hydra.callbacks.slurm_preflight.plan_enforce=false "
                        f"submits them anyway")
    return problems, []

