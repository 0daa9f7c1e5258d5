"""Entry point: compose model × task × method with Hydra, then one run (hizfo/run/session.py) writes one record.

    python run.py                                   # tiny OPT on the offline toy task (the default)
    python run.py -m method=hizfo,mezo model=opt-13b task=scitldr
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from hizfo.run.cli import call_main, end_failed_run
from hizfo.run.runspec import derive_variant  # noqa: F401  (re-exported: the variant of a command line)
from hizfo.registry import register_schemas
from hizfo.run.session import VERSION_BASE, RunInputs, run

register_schemas()


def inputs_from_hydra() -> RunInputs:
    """What Hydra's global state adds to the config: the overrides, the run folder, Slurm's checkpoint cadence."""
    hydra_cfg = HydraConfig.get()
    minutes = OmegaConf.select(hydra_cfg, "callbacks.slurm_preflight.checkpoint_minutes", default=None)
    sweep = str(hydra_cfg.sweep.dir) if hydra_cfg.mode == RunMode.MULTIRUN else None
    return RunInputs(overrides=tuple(hydra_cfg.overrides.task), output_dir=Path(hydra_cfg.runtime.output_dir),
                     checkpoint_minutes=float(minutes) if minutes is not None else None, sweep_dir=sweep)


@hydra.main(version_base=VERSION_BASE, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg, inputs_from_hydra())
    except Exception as exc:
        end_failed_run(exc, multirun=HydraConfig.get().mode == RunMode.MULTIRUN)


if __name__ == "__main__":
    sys.exit(call_main(main))                     # Hydra's own errors too: one line, exit 2 (hizfo/run/cli.py)
