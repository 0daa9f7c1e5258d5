"""Entry point: compose model × task × method with Hydra, train in the shared loop, write one record.

    python run.py                                   # tiny OPT on the offline toy task (the default)
    python run.py -m method=hizfo,mezo model=opt-13b task=scitldr
"""
from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from hizfo.registry import register_schemas
from hizfo.run.runspec import derive_variant  # noqa: F401  (re-exported: the variant of a command line)

register_schemas()


def run(cfg: DictConfig) -> dict[str, Any]:
    """One run: validate, build, train, evaluate, record. Returns the record written (as JSON)."""
    from hizfo.core.methods import method_traits
    from hizfo.errors import ConfigError
    from hizfo.run.checkpoint import Checkpointer
    from hizfo.run.loop import pick_device, seed_everything
    from hizfo.core.precision import check_precision
    from hizfo.run.records import RunRecord, check_writable
    from hizfo.run.runspec import RunSpec, config_hash
    from hizfo.run.slurm_preflight import checkpoint_minutes_from_hydra
    from hizfo.run.validation import validate_run_config

    validate_run_config(cfg)                                # config-only checks, one line each (ConfigError)
    check_precision(cfg.precision, pick_device(cfg.device))   # a value or a device without bf16: before any load
    hydra_cfg = HydraConfig.get()
    spec = RunSpec.build(OmegaConf.to_container(cfg, resolve=True), hydra_cfg.overrides.task)
    seed_everything(cfg.seed)
    method = instantiate(cfg.method, _convert_="all")       # validates the method's values (before any lock)
    task = instantiate(cfg.task, _convert_="all")           # validates the task's values (data loads later)
    if cfg.method.max_steps != 0 and method_traits(method).holds_out_dev:
        task.train_dev_split(batch_size=task.cfg.batch_size)   # a dev split held out leaves a batch: before any lock
    path = spec.path

    def finished() -> Optional[RunRecord]:
        """The ok record of this very run, if one exists (a different config's is refused)."""
        existing = RunRecord.read(path)
        if existing is None or existing.status != "ok" or cfg.overwrite:
            return None
        if not spec.same_run(config_hash(existing.config)):     # by today's rules: older records hash otherwise
            raise ConfigError(f"results: {path} holds an ok record from a different config; "
                              f"pass overwrite=true to replace it, or variant=NAME to keep both")
        print(f"skip: ok record exists at {path} (overwrite=true to run again)")
        return existing

    done = finished()
    if done is not None:
        return done.to_json()
    check_writable(cfg.results_dir)
    # one writer per run: locks the run's checkpoint folder, so a duplicate launch stops here, before the model
    # loads; then look again, in case the other launch finished the run between the first look and the lock
    checkpointer = Checkpointer.for_run(spec, every_steps=int(cfg.checkpoint_every or 0),
                                        every_minutes=checkpoint_minutes_from_hydra())
    try:                    # every way out frees the lock (its files go; checkpoints stay for a resume)
        return _locked_run(cfg, spec, method, task, checkpointer, finished)
    finally:
        checkpointer.close()


def _locked_run(cfg: DictConfig, spec: Any, method: Any, task: Any, checkpointer: Any,
                finished: Callable[[], Any]) -> dict[str, Any]:
    """The part of ``run`` that holds the checkpoint folder's lock: load, train, evaluate, record."""
    from hizfo.errors import ConfigError, one_line
    from hizfo.run.loop import LoopOptions, pick_device, train_and_evaluate
    from hizfo.run.meters import Meters
    from hizfo.core.precision import use_precision
    from hizfo.run.records import Costs, RunRecord
    from hizfo.run.tracking import Tracker

    done = finished()
    if done is not None:
        checkpointer.discard()
        return done.to_json()
    device = pick_device(cfg.device)
    options = LoopOptions.from_run_config(cfg, device)       # divergence_* checked before the model loads
    loaded, prov = _load_model(cfg, method, task, device)
    tracker = Tracker(kind=cfg.logger.kind, project=cfg.logger.project, mode=cfg.logger.mode,
                      run_dir=Path(HydraConfig.get().runtime.output_dir), name=spec.name, config=spec.config,
                      entity=cfg.logger.entity, tags=list(cfg.logger.tags), log_every=cfg.logger.log_every)
    meters = Meters()
    try:
        with use_precision(cfg.precision):                    # bf16-mixed: autocast in the methods' losses
            result = train_and_evaluate(method, cfg.method, loaded, task, options, meters, tracker.log,
                                        checkpoint=checkpointer)
    except ConfigError:
        tracker.finish(failed=True)
        raise
    except Exception as exc:                                  # any failure leaves a failed record ...
        record = RunRecord(status="failed", config=spec.config, config_hash=spec.config_hash,
                           costs=Costs.from_meters(meters), provenance=prov, error=one_line(exc),
                           failed_step=getattr(exc, "step", None), traceback=traceback.format_exc())
        current = RunRecord.read(spec.path)
        kept_ok = current is not None and current.status == "ok"
        if not kept_ok:                                        # ... but never in place of an ok one
            record.write(spec.path)
        tracker.finish(failed=True)
        where = (f"the ok record at {spec.path} was kept (overwrite=true: no failed record replaces it)" if kept_ok
                 else f"record at {spec.path}")
        print(f"failed: {one_line(exc)}; {where}", file=sys.stderr)
        exc.reported = True
        raise
    record = _write_ok_record(cfg, spec, method, task, result, meters, prov, tracker)
    checkpointer.discard()
    where = tracker.location or "not logged (logger=none)"
    tracker.finish()
    _print_summary(result.metrics, record, spec.path, where)
    return record.to_json()


def _load_model(cfg: DictConfig, method: Any, task: Any, device: Any) -> tuple[Any, dict[str, Any]]:
    """The model on its device, checked against the task's lengths; and the run's provenance."""
    from hizfo.core.methods import method_traits
    from hizfo.core.models import load_model
    from hizfo.run.records import provenance
    from hizfo.run.threads import apply_num_threads
    from hizfo.run.validation import check_model_positions

    model_kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    model_kwargs.pop("_target_")
    num_threads = apply_num_threads(cfg.num_threads)       # before the model loads (null: the CPUs we may use)
    loaded = load_model(**model_kwargs, seed=cfg.seed, precision=cfg.precision)
    check_model_positions(task, loaded, trains=cfg.method.max_steps != 0,
                          reserved=method_traits(method).reserved_positions)   # prefix-tuning's virtual tokens
    if loaded.device_map is None:
        loaded.model.to(device)
    return loaded, {**provenance(device), "num_threads": num_threads}


def _write_ok_record(cfg: DictConfig, spec: Any, method: Any, task: Any, result: Any, meters: Any,
                     prov: dict[str, Any], tracker: Any) -> Any:
    """The ok record and every prediction, written next to each other; the final figures logged."""
    from hizfo.run.checkpoint_files import params_sha256
    from hizfo.run.predictions import prediction_rows, write_jsonl_atomic
    from hizfo.run.records import Costs, Curve, RunRecord

    summary = result.summary
    costs = Costs.from_meters(meters, summary)
    record = RunRecord(
        status="ok", config=spec.config, config_hash=spec.config_hash, metrics=result.metrics, costs=costs,
        partition=summary.partition, method_summary=summary.details, provenance=prov,
        curve=Curve(**result.curve(cfg.curve_every)), zo_seeds=result.zo_seeds,
        final_train_loss=result.losses[-1] if result.losses else None,
        final_params_sha256=params_sha256(method.eval_model()),
        samples=[{"prompt": e.prompt[-300:], "prediction": p, "references": e.references}
                 for e, p in zip(task.examples("eval"), result.predictions[:5])])
    tracker.log_final(meters.steps, {**{f"eval/{k}": v for k, v in result.metrics.items()},
                                     **{f"costs/{k}": v for k, v in vars(costs).items()
                                        if isinstance(v, (int, float)) and not isinstance(v, bool)}})
    write_jsonl_atomic(spec.predictions_path, prediction_rows(task.examples("eval"), result.predictions))
    record.write(spec.path)
    return record


def _print_summary(metrics: dict[str, Any], record: Any, path: Path, where: str) -> None:
    costs = record.costs
    shown = ", ".join(f"{k}={v:.2f}" for k, v in metrics.items() if isinstance(v, (int, float)))
    print(f"metrics: {shown}")
    resumed = f", resumed {record.resumed}x" if record.resumed else ""
    print(f"costs: peak {costs.peak_memory_gb:.2f} GB ({costs.memory_kind}), train {costs.train_seconds:.1f} s"
          f"{resumed}, eval {costs.eval_seconds:.1f} s, {costs.n_forward} forwards / {costs.n_backward} backwards")
    print(f"record: {path}")
    print(f"wandb: {where}")


def _config_error(exc: BaseException):
    """The ConfigError behind ``exc``, looking through Hydra's InstantiationException wrapper."""
    from hizfo.errors import ConfigError
    while exc is not None:
        if isinstance(exc, ConfigError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except Exception as exc:
        config_error = _config_error(exc)
        if config_error is not None:
            print(f"error: {config_error}", file=sys.stderr)
            exc.reported = True                               # hizfo.run.cli.call_main prints nothing more
        elif not getattr(exc, "reported", False):
            traceback.print_exc()
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        sys.exit(2 if config_error is not None else 1)


if __name__ == "__main__":
    from hizfo.run.cli import call_main
    sys.exit(call_main(main))                     # Hydra's own errors too: one line, exit 2 (hizfo/run/cli.py)
