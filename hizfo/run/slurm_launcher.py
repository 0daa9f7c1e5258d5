"""``launcher=slurm``'s Hydra launcher: hydra-submitit-launcher's SlurmLauncher, with job names that say what runs.

Submitit submits a sweep as one job array, and an array has one name (``squeue`` would show ``run`` for every job).
Here the sweep's jobs are grouped by method and task, and each group is its own array named
``hizfo-<method>-<task>`` (``hydra.launcher.name`` sets the prefix); job numbers, folders and results are the
sweep's as before. conf/launcher/slurm.yaml selects it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf

from hizfo.run.sweep_summary import note_submitted, refuse_unchecked_slurm

DEFAULT_PREFIX = "hizfo"


def choice(overrides: Sequence[str], group: str, default: str) -> str:
    """The option a job's overrides pick for a config group (``method=mezo`` -> mezo), else the sweep's default."""
    for item in overrides:
        key, _, value = item.lstrip("+~").partition("=")
        if key == group:
            return value
    return default


def job_name(prefix: str, method: str, task: str) -> str:
    """``hizfo-mezo-scitldr``: characters Slurm shows as they are."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{prefix}-{method}-{task}")


def group_jobs(job_overrides: Sequence[Sequence[str]], defaults: dict[str, str],
               prefix: str = DEFAULT_PREFIX) -> dict[str, list[int]]:
    """The sweep's job indices by job name, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for index, overrides in enumerate(job_overrides):
        name = job_name(prefix, choice(overrides, "method", defaults["method"]),
                        choice(overrides, "task", defaults["task"]))
        groups.setdefault(name, []).append(index)
    return groups


class NamedSlurmLauncher(SlurmLauncher):
    """One submitit job array per (method, task) of the sweep, named after them."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit
        assert self.config is not None
        refuse_unchecked_slurm(self.config)
        params = dict(self.params)
        prefix = str(params.pop("name", None) or DEFAULT_PREFIX)
        prefix = DEFAULT_PREFIX if prefix == str(self.config.hydra.job.name) else prefix   # Hydra's "run": ours
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=params.pop("submitit_folder"),
                                         slurm_max_num_timeout=params.pop("max_num_timeout", 0))
        base = set(OmegaConf.structured(_base_conf()).keys())
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v for k, v in params.items()})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        choices = self.config.hydra.runtime.choices
        groups = group_jobs(job_overrides, {"method": str(choices.method), "task": str(choices.task)}, prefix)
        jobs: dict[int, Any] = {}
        for name, indices in groups.items():
            executor.update_parameters(name=name)
            args = []
            for index in indices:
                number = initial_job_idx + index
                print(f"[slurm] {name} #{number}: {' '.join(filter_overrides(job_overrides[index]))}", flush=True)
                args.append((list(job_overrides[index]), "hydra.sweep.dir", number, f"job_id_for_{number}",
                             Singleton.get_state()))
            for index, job in zip(indices, executor.map_array(self, *zip(*args))):
                jobs[index] = job
        ordered = [jobs[index] for index in range(len(job_overrides))]
        note_submitted(ordered)
        return collect_results(ordered, job_overrides)


def collect_results(jobs: Sequence[Any], job_overrides: Sequence[Sequence[str]]) -> list[JobReturn]:
    """Every job's result, waiting for each: a job that ended returning nothing (killed, out of memory,
    ``os._exit``) is a failed result with submitit's error, and the jobs after it are still waited for (before,
    its exception stopped the wait and the summary counted jobs still running as lost)."""
    results = []
    for job, overrides in zip(jobs, job_overrides):
        try:
            results.append(job.results()[0])
        except Exception as exc:                           # noqa: BLE001 - submitit's UncompletedJobError and kin
            failed = JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=exc)
            results.append(failed)
    return results


def _base_conf() -> Any:
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    return BaseQueueConf
