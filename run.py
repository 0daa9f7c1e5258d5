"""Entry point: compose model × task × method with Hydra, then one run (hizfo/run/session.py) writes one record.

    python run.py                                   # tiny OPT on the offline toy task (the default)
    python run.py -m method=hizfo,mezo model=opt-13b task=scitldr
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from hizfo.run.entry_interrupts import end_start_up, finished_interrupt, guard_after_finish, guard_start_up

guard_start_up()                                  # Ctrl-C during the imports below (~14 s): one line, exit 130
import hydra                                      # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode                   # noqa: E402
from omegaconf import DictConfig, OmegaConf       # noqa: E402

from hizfo.registry import register_schemas      # noqa: E402
from hizfo.run.cli import call_main, end_failed_run  # noqa: E402
from hizfo.run.session import VERSION_BASE, RunInputs, run  # noqa: E402
from hizfo.run.sweep_summary import record_path_of  # noqa: E402

register_schemas()
end_start_up()


def inputs_from_hydra() -> RunInputs:
    """What Hydra's global state adds to the config: the overrides, the run folder, Slurm's checkpoint cadence."""
    hydra_cfg = HydraConfig.get()
    minutes = OmegaConf.select(hydra_cfg, "callbacks.slurm_preflight.checkpoint_minutes", default=None)
    sweep = str(hydra_cfg.sweep.dir) if hydra_cfg.mode == RunMode.MULTIRUN else None
    return RunInputs(overrides=tuple(hydra_cfg.overrides.task), output_dir=Path(hydra_cfg.runtime.output_dir),
                     checkpoint_minutes=float(minutes) if minutes is not None else None, sweep_dir=sweep)


@hydra.main(version_base=VERSION_BASE, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    inputs, started = inputs_from_hydra(), time.time()
    try:
        run(cfg, inputs)
    except KeyboardInterrupt as exc:              # after the ok record (W&B finishing): say the run had finished
        raise finished_interrupt(exc, record_path_of(cfg, list(inputs.overrides)), started)
    except Exception as exc:
        end_failed_run(exc, multirun=HydraConfig.get().mode == RunMode.MULTIRUN)
    if inputs.sweep_dir is None:
        guard_after_finish()                      # Hydra's clean-up of a single run is left


if __name__ == "__main__":
    code = call_main(main)                        # Hydra's own errors too: one line, exit 2 (hizfo/run/cli.py)
    guard_after_finish()                          # a Ctrl-C in the clean-up (W&B, atexit): one line, exit 130
    sys.exit(code)
