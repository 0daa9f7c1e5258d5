"""Checks run on the submitting machine before ``launcher=slurm`` calls sbatch (the Hydra callback in
conf/launcher/slurm.yaml), and the checkpoint interval that callback carries to the jobs. See docs/slurm.md."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Optional

from hizfo.errors import ConfigError

try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:      # pragma: no cover (hydra-core is a dependency)
    _HydraCallback = object  # type: ignore[assignment,misc]


def slurm_partitions() -> list[str]:
    """The partitions ``sinfo`` lists on this cluster."""
    if shutil.which("sinfo") is None:
        raise ConfigError("launcher=slurm: `sinfo` is not on PATH, so this is not a Slurm login node "
                          "(use launcher=submitit_local or launcher=local here)")
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        raise ConfigError("launcher=slurm: `sinfo` did not answer in 60 s; is slurmctld up?") from exc
    if out.returncode != 0:
        raise ConfigError(f"launcher=slurm: `sinfo` failed: {out.stderr.strip() or out.stdout.strip()}")
    return sorted({line.strip() for line in out.stdout.splitlines() if line.strip()})


@dataclass(frozen=True)
class Node:
    """What one node of a partition offers, as ``sinfo -N -o '%P|%c|%m|%G'`` prints it."""
    partition: str          # without the ``*`` sinfo puts after the default partition
    default: bool           # the cluster's default partition (where a job with no partition goes)
    cpus: int
    mem_mb: int             # Slurm's RealMemory, in MB (MiB); sbatch --mem=NGB asks N x 1024 of them
    gpus: int               # GPUs in the node's generic resources (gres gpu[:type]:count), summed over types
    gres: str


NODE_FORMAT = "%P|%c|%m|%G"


def gpu_count(gres: str) -> int:
    """GPUs in a ``%G`` field: ``gpu:4``, ``gpu:a100:4(S:0-1)``, ``gpu:a100:2,gpu:v100:1``, ``(null)`` -> 4, 4, 3, 0.
    A count, not a substring: ``gpu:0`` or a resource merely named like one (``mygpu``) is no GPU."""
    total = 0
    for item in re.sub(r"\([^)]*\)", "", gres).split(","):
        parts = item.strip().split(":")
        if parts[0] != "gpu":
            continue
        total += int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
    return total


def _number(text: str) -> int:
    """sinfo's number, which a grouped line may suffix with ``+`` (``2+``: 2 or more); unknown (``N/A``) is 0."""
    match = re.match(r"\d+", text.strip())
    return int(match.group()) if match else 0


def parse_nodes(text: str) -> list[Node]:
    """The lines of ``sinfo -h -N -o '%P|%c|%m|%G'`` (one per node and partition)."""
    nodes = []
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 4 or not fields[0]:
            continue
        name, cpus, mem, gres = fields
        nodes.append(Node(partition=name.rstrip("*"), default=name.endswith("*"), cpus=_number(cpus),
                          mem_mb=_number(mem), gpus=gpu_count(gres), gres=gres.strip()))
    return nodes


def slurm_nodes() -> list[Node]:
    """Every node of every partition, from ``sinfo`` (one call)."""
    out = subprocess.run(["sinfo", "-h", "-N", "-o", NODE_FORMAT], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise ConfigError(f"launcher=slurm: `sinfo` failed: {out.stderr.strip() or out.stdout.strip()}")
    return parse_nodes(out.stdout)


def resource_problems(nodes: list[Node], partition: Optional[str], cpus_per_task: Optional[int] = None,
                      mem_gb: Optional[float] = None, gpus_per_node: Optional[int] = None,
                      tasks_per_node: Optional[int] = None) -> list[str]:
    """Every way what one job asks of a node (``cpus_per_task`` x ``tasks_per_node`` CPUs, ``mem_gb`` GB,
    ``gpus_per_node`` GPUs) does not fit the partition's largest node, one line each; sbatch accepts a job no node
    can hold, and it pends for ever (Reason=PartitionConfig) while the sweep waits without a word. ``partition``
    None: the default partition; a comma-separated list: the job may run on any of them."""
    names = [p.strip() for p in str(partition).split(",")] if partition is not None else []
    pool = [n for n in nodes if n.partition in names] if names else [n for n in nodes if n.default] or nodes
    if not pool:
        return []                            # sinfo lists no node for it: nothing to compare against
    where = f"partition '{partition}'" if partition is not None else f"the default partition '{pool[0].partition}'"
    cpus = (cpus_per_task or 0) * (tasks_per_node or 1)
    problems = []
    if cpus_per_task and cpus > max(n.cpus for n in pool):
        tasks = f" x tasks_per_node={tasks_per_node}" if (tasks_per_node or 1) > 1 else ""
        problems.append(f"hydra.launcher.cpus_per_task={cpus_per_task}{tasks}: {where} has at most "
                        f"{max(n.cpus for n in pool)} CPUs a node (sinfo); lower hydra.launcher.cpus_per_task "
                        f"or pick another partition")
    if mem_gb and mem_gb * 1024 > max(n.mem_mb for n in pool):
        most = max(n.mem_mb for n in pool)
        problems.append(f"hydra.launcher.mem_gb={mem_gb:g}: {where} has at most {most} MB ({most / 1024:.1f} GB) "
                        f"a node (sinfo); lower hydra.launcher.mem_gb to <= {most // 1024}, set it to null "
                        f"(the partition's default), or pick another partition")
    if gpus_per_node and gpus_per_node > max(n.gpus for n in pool):
        most = max(n.gpus for n in pool)
        gres = " ".join(sorted({n.gres for n in pool}))
        what = "has no GPUs" if most == 0 else f"has at most {most} GPUs a node"
        problems.append(f"hydra.launcher.gpus_per_node={gpus_per_node}: {where} {what} (sinfo %G: {gres}); "
                        f"{'pick a GPU partition' if most == 0 else f'lower it to <= {most}'} or set "
                        f"hydra.launcher.gpus_per_node=null")
    if not problems and not any(n.cpus >= cpus and n.mem_mb >= (mem_gb or 0) * 1024
                                and n.gpus >= (gpus_per_node or 0) for n in pool):
        problems.append(f"hydra.launcher: no node of {where} has {cpus} CPUs, {mem_gb or 0:g} GB and "
                        f"{gpus_per_node or 0} GPUs at once (sinfo: "
                        f"{'; '.join(sorted({f'{n.cpus} CPUs {n.mem_mb} MB {n.gpus} GPUs' for n in pool}))}); "
                        f"ask for less of one of them")
    return problems


def check_resources(nodes: list[Node], partition: Optional[str], cpus_per_task: Optional[int] = None,
                    mem_gb: Optional[float] = None, gpus_per_node: Optional[int] = None,
                    tasks_per_node: Optional[int] = None) -> None:
    """``resource_problems`` as one ConfigError (one line per problem), if there is any."""
    problems = resource_problems(nodes, partition, cpus_per_task=cpus_per_task, mem_gb=mem_gb,
                                 gpus_per_node=gpus_per_node, tasks_per_node=tasks_per_node)
    if problems:
        raise ConfigError("\n".join(problems))


def check_partition(partition: Optional[str], gpus_per_node: Optional[int] = None,
                    cpus_per_task: Optional[int] = None, mem_gb: Optional[float] = None,
                    tasks_per_node: Optional[int] = None) -> None:
    """A named partition (or each of a comma-separated list) must exist, and its largest node must hold what one
    job asks for (``check_resources``): sbatch would refuse the array later, or accept a job that never starts."""
    available = slurm_partitions()
    names = [p.strip() for p in str(partition).split(",")] if partition is not None else []
    unknown = [p for p in names if p not in available]
    if unknown:
        raise ConfigError(f"hydra.launcher.partition: '{','.join(unknown)}' does not exist on this cluster; "
                          f"partitions: {', '.join(available) or '(none)'}. Set it in conf/launcher/site.yaml "
                          f"or on the command line (hydra.launcher.partition=NAME)")
    if cpus_per_task or mem_gb or gpus_per_node:
        check_resources(slurm_nodes(), partition, cpus_per_task=cpus_per_task, mem_gb=mem_gb,
                        gpus_per_node=gpus_per_node, tasks_per_node=tasks_per_node)


def slurm_minutes(text: str) -> Optional[float]:
    """A Slurm time limit as ``sinfo %l`` prints it, in minutes: ``45`` (MM), ``30:00`` (MM:SS), ``1:00:00``,
    ``2-12`` (D-HH), ``1-00:30`` (D-HH:MM), ``1-00:00:00``; None for none (``infinite``, ``UNLIMITED``) or ``n/a``."""
    days, _, clock = text.strip().rpartition("-")
    try:
        d = int(days) if days else 0
        parts = [int(p) for p in clock.split(":")]
    except ValueError:
        return None
    if days:
        h, m, sec = (parts + [0, 0])[:3]
    else:
        h, m, sec = {1: [0, *parts, 0], 2: [0, *parts], 3: parts}.get(len(parts), [0, 0, 0])
    return d * 1440 + h * 60 + m + sec / 60


def check_partition_time(partition: Optional[str], timeout_min: float) -> None:
    """``timeout_min`` must fit the time limit of the partition (the default one when none is named; of at least one
    of a comma-separated list): a longer job is accepted by sbatch and then pends for ever (PartitionTimeLimit)."""
    if shutil.which("sinfo") is None:
        return                                  # no cluster: the partition check says so
    out = subprocess.run(["sinfo", "-h", "-o", "%P|%l"], capture_output=True, text=True, timeout=60)
    limits: dict[str, Optional[float]] = {}
    default = None
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        name, sep, limit = line.strip().partition("|")
        if sep:
            limits[name.rstrip("*")] = slurm_minutes(limit)
            default = name.rstrip("*") if name.endswith("*") else default
    names = [p.strip() for p in str(partition).split(",")] if partition is not None else [default]
    known = [limits[n] for n in names if n in limits]
    if known and all(m is not None and timeout_min > m for m in known):
        raise ConfigError(f"hydra.launcher.timeout_min={timeout_min:g} exceeds the time limit of partition "
                          f"{','.join(n for n in names if n)} ({max(m for m in known if m is not None):g} min, "
                          f"sinfo %l): the jobs would pend for ever; lower timeout_min (a requeued job resumes from "
                          f"its checkpoint) or pick another partition")


def preflight_problems(launcher: Any, checkpoint_minutes: Optional[float]) -> list[str]:
    """Every problem of a Slurm launcher config at once: the timeout, the partition, CPUs, memory and GPUs."""
    problems: list[str] = []
    for check in (lambda: check_timeout(float(launcher.timeout_min), float(launcher.get("signal_delay_s", 0) or 0),
                                        checkpoint_minutes),
                  lambda: check_ranks_per_gpu(launcher.get("tasks_per_node"), launcher.get("gpus_per_node")),
                  lambda: check_partition(launcher.get("partition"), gpus_per_node=launcher.get("gpus_per_node"),
                                          cpus_per_task=launcher.get("cpus_per_task"), mem_gb=launcher.get("mem_gb"),
                                          tasks_per_node=launcher.get("tasks_per_node")),
                  lambda: check_partition_time(launcher.get("partition"), float(launcher.timeout_min))):
        try:
            check()
        except ConfigError as exc:
            problems.extend(str(exc).splitlines())
    return problems


def batch_problems(config: Any) -> list[str]:
    """Every cell of the sweep whose global batch (``task.batch_size``) its job's ranks (tasks_per_node x nodes)
    cannot split, one line each, before sbatch: such a job would queue, start and stop at its first check."""
    from hizfo.run.plan import sweep_cells
    from hizfo.run.plan_slurm import compose_cell, job_layout
    world, _ = job_layout(config.hydra.launcher)
    if world == 1 or not config.hydra.get("overrides"):
        return []
    cells = sweep_cells(list(config.hydra.overrides.get("task") or []),
                        dict(config.hydra.sweeper.get("params") or {}))
    problems = []
    for cell in cells:
        batch = int(compose_cell(cell).task.batch_size)
        if batch % world:
            problems.append(f"{' '.join(cell) or '(the default config)'}: task.batch_size={batch} does not split "
                            f"over the job's {world} ranks (tasks_per_node x nodes); use a multiple of {world} "
                            f"(task.batch_size is the global batch) or fewer ranks")
    return problems


def check_ranks_per_gpu(tasks_per_node: Optional[int], gpus_per_node: Optional[int]) -> None:
    """Several tasks per node are the ranks of one run (launcher=slurm_multinode): one per GPU, so on a GPU partition
    their number must equal the GPUs per node (a CPU partition, gpus_per_node 0 or null, runs gloo ranks)."""
    tasks, gpus = int(tasks_per_node or 1), int(gpus_per_node or 0)
    if tasks > 1 and gpus and tasks != gpus:
        raise ConfigError(f"hydra.launcher.tasks_per_node: {tasks} ranks per node but gpus_per_node is {gpus}; "
                          f"a run's ranks take one GPU each: set both to the same number")


def check_timeout(timeout_min: float, signal_delay_s: float, checkpoint_minutes: Optional[float]) -> None:
    """A job must reach a periodic checkpoint before Slurm's time-limit warning, or a requeued job could
    start over from the same checkpoint every time (a signal is not guaranteed: node failure, OOM kill)."""
    if not timeout_min > 0:
        raise ConfigError(f"hydra.launcher.timeout_min: must be > 0, got {timeout_min}")
    usable_s = timeout_min * 60 - signal_delay_s
    if usable_s <= 0:
        raise ConfigError(f"hydra.launcher.timeout_min={timeout_min:g} is not longer than "
                          f"hydra.launcher.signal_delay_s={signal_delay_s:g} s: the time-limit signal would come "
                          f"before the job starts")
    if checkpoint_minutes is not None and checkpoint_minutes * 60 > usable_s:
        raise ConfigError(
            f"hydra.launcher.timeout_min={timeout_min:g} leaves {usable_s / 60:.1f} min before Slurm's time-limit "
            f"signal (signal_delay_s={signal_delay_s:g}), shorter than the checkpoint interval "
            f"hydra.callbacks.slurm_preflight.checkpoint_minutes={checkpoint_minutes:g}: a job could end before "
            f"its first checkpoint and every requeue would start from the same place. Raise timeout_min or "
            f"lower checkpoint_minutes")


class SlurmPreflight(_HydraCallback):
    """Hydra callback (conf/launcher/slurm.yaml): refuses before sbatch a partition that does not exist, a job its
    largest node cannot hold (CPUs, memory, GPUs), a too short timeout, or a cell of the sweep whose predicted
    per-GPU peak exceeds the partition's GPU memory (hizfo/run/plan_slurm.py; ``plan_enforce=false`` or
    HIZFO_PLAN_ENFORCE=0: warned, submitted anyway). ``gpu_gb``: the partition's GPU memory when sinfo's gres type
    does not say it."""

    def __init__(self, checkpoint_minutes: Optional[float] = None, plan_enforce: bool = True,
                 gpu_gb: Optional[float] = None) -> None:
        if checkpoint_minutes is not None and not checkpoint_minutes > 0:
            raise ConfigError(f"hydra.callbacks.slurm_preflight.checkpoint_minutes: must be > 0 or null, "
                              f"got {checkpoint_minutes}")
        if gpu_gb is not None and not gpu_gb > 0:
            raise ConfigError(f"hydra.callbacks.slurm_preflight.gpu_gb: must be > 0 or null, got {gpu_gb}")
        self.checkpoint_minutes = checkpoint_minutes
        self.plan_enforce = bool(plan_enforce)
        self.gpu_gb = gpu_gb

    def memory(self, config: Any) -> list[str]:
        """The memory check's refusals (or, not enforced, its warnings printed and nothing refused)."""
        from hizfo.run.plan_slurm import enforced, memory_problems
        if shutil.which("sinfo") is None or not config.hydra.get("overrides"):
            return []                        # no cluster (reported by the partition check) or no sweep to plan
        try:
            problems, warnings = memory_problems(config, slurm_nodes(), self.gpu_gb)
        except ConfigError as exc:
            return [str(exc)]
        for line in warnings + ([] if enforced(self.plan_enforce) else problems):
            print(f"warning: {line}", file=sys.stderr, flush=True)
        return problems if enforced(self.plan_enforce) else []

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        """Runs on the submitting machine before any job is submitted."""
        launcher = config.hydra.launcher
        if not str(launcher.get("_target_", "")).endswith("SlurmLauncher"):
            return
        problems = preflight_problems(launcher, self.checkpoint_minutes) + batch_problems(config)
        problems += self.memory(config)      # every cell planned, whatever else is wrong: one message for all
        if problems:
            # every problem in one message, one line each; Hydra turns a callback's Exception into a warning and
            # submits anyway, so the sweep stops here
            print("\n".join(f"error: {problem}" for problem in problems), file=sys.stderr, flush=True)
            raise SystemExit(2)
