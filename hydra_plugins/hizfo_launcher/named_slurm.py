"""Hydra finds launchers only in the ``hydra_plugins`` namespace package: this is launcher=slurm's, the class in
hizfo/run/slurm_launcher.py under the name Hydra accepts (conf/launcher/slurm.yaml)."""
from hizfo.run.slurm_launcher import NamedSlurmLauncher as _Named


class NamedSlurmLauncher(_Named):
    """One submitit job array per (method, task) of the sweep, named after them (hizfo.run.slurm_launcher)."""
