"""One run, from a composed config to its record: the pipeline ``python run.py`` calls and every other caller
(tests, scripts, benchmarks) calls the same way.

    from hizfo.run.session import RunInputs, compose, run
    cfg = compose(["method=mezo", "method.max_steps=2"])
    record = run(cfg, RunInputs(overrides=("method=mezo", "method.max_steps=2")))

The steps, in order: ``prepare`` (config-only checks, the run's identity, the method and task objects), ``finished``
(an ok record of this very run: skip), ``lock`` (one writer per run), ``load`` (threads, model, provenance),
``train`` (the shared loop, hizfo/run/loop.py), ``record`` (the ok record and predictions, or a failed record).
Nothing here reads Hydra's global state: what the command line adds (its overrides, Hydra's run folder, the Slurm
launcher's checkpoint cadence) comes in ``RunInputs``; ``run.py`` builds it from ``HydraConfig``.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from hizfo.core import distributed
from hizfo.core.device import pick_device, seed_everything
from hizfo.core.methods import Method, method_traits
from hizfo.core.models import LoadedModel
from hizfo.core.precision import check_precision, use_precision
from hizfo.errors import ConfigError, PeerFailed, TrainingDiverged, one_line
from hizfo.registry import register_schemas
from hizfo.run.checkpoint import Checkpointer
from hizfo.run.checkpoint_files import tensors_sha256
from hizfo.run.loop import LoopOptions, LoopResult, train_and_evaluate
from hizfo.run.meters import Meters
from hizfo.run.predictions import prediction_rows, write_jsonl_atomic
from hizfo.run.rank_failures import RankFailure, clear_notes, earlier_failures, first_cause, note_failure
from hizfo.run.records import Costs, Curve, RunRecord, check_writable, provenance
from hizfo.run.runspec import RunSpec, config_hash
from hizfo.run.threads import apply_num_threads
from hizfo.run.tracking import Tracker, stable_run_id
from hizfo.run.validation import check_before_load, check_model_positions, validate_run_config
from hizfo.tasks.base import Task

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
VERSION_BASE = "1.3"          # run.py's @hydra.main uses the same


def compose(overrides: Iterable[str] = (), *, hydra: bool = False) -> DictConfig:
    """The run config ``python run.py <overrides>`` composes (``hydra=True``: with its ``hydra`` node kept). Inside
    run.py's @hydra.main (a launcher's callback, say) through its initialised Hydra, which refuses a second
    initialisation."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    register_schemas()
    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=VERSION_BASE):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)


@dataclass(frozen=True)
class RunInputs:
    """What a run takes besides its config: the command line's overrides (they name the variant), the folder for
    the tracker's files (Hydra's run folder under run.py; None: beside the record), the Slurm launcher's
    checkpoint cadence in minutes (None: only ``checkpoint_every`` steps and signals) and, in a multirun, its
    folder."""
    overrides: tuple[str, ...] = ()
    output_dir: Optional[Path] = None
    checkpoint_minutes: Optional[float] = None
    sweep_dir: Optional[str] = None         # the multirun's folder: W&B groups a sweep's runs by it


@dataclass
class Prepared:
    """A run's config checked and its identity and objects built, before any lock or model."""
    cfg: DictConfig
    spec: RunSpec
    method: Method
    task: Task
    inputs: RunInputs
    backend: str = "none"             # the process group's, under torchrun (check_world)

    def finished(self) -> Optional[RunRecord]:
        """The ok record of this very run, if one exists (a different config's is refused)."""
        path = self.spec.path
        existing = RunRecord.read(path)
        if existing is None or existing.status != "ok" or self.cfg.overwrite:
            return None
        if not self.spec.same_run(config_hash(existing.config)):  # by today's rules: older records hash otherwise
            raise ConfigError(f"results: {path} holds an ok record from a different config; "
                              f"pass overwrite=true to replace it, or variant=NAME to keep both")
        if distributed.launched_rank() == 0:                   # every rank skips; one says so
            print(f"skip: ok record exists at {path} (overwrite=true to run again)")
        return existing


def prepare(cfg: DictConfig, inputs: RunInputs) -> Prepared:
    """Every config-only check, one line each (ConfigError), before any lock or load."""
    validate_run_config(cfg)
    check_precision(cfg.precision, pick_device(cfg.device))   # a value or a device without bf16: before any load
    spec = RunSpec.build(OmegaConf.to_container(cfg, resolve=True), inputs.overrides)
    seed_everything(cfg.seed)
    method = instantiate(cfg.method, _convert_="all")       # validates the method's values (before any lock)
    task = instantiate(cfg.task, _convert_="all")           # validates the task's values (data loads later)
    check_before_load(cfg, task)          # sandbox opt-in, the weights present, the data readable: before any load
    if cfg.method.max_steps != 0 and method_traits(method).holds_out_dev:
        task.train_dev_split(batch_size=task.cfg.batch_size)   # a dev split held out leaves a batch: before any lock
    backend = check_world(cfg, method)
    return Prepared(cfg=cfg, spec=spec, method=method, task=task, inputs=inputs, backend=backend)


def check_world(cfg: DictConfig, method: Method) -> str:
    """The process-group backend for a ``torchrun`` launch, its batch and method checked (one line each, on every
    rank alike, before any model loads); ``none`` for one process."""
    backend = distributed.pick_backend(cfg.backend, pick_device(cfg.device).type)
    size = distributed.launched_world_size()
    if size == 1:
        return "none"
    distributed.check_global_batch(int(cfg.task.batch_size), distributed.World(size=size))
    if cfg.method.max_steps != 0 and not method_traits(method).data_parallel:
        raise ConfigError(f"method: {cfg.method.name} cannot run on several processes yet (docs/design.md, "
                          f"'Many processes', lists those that can); launch it as one process")
    return backend


def run(cfg: DictConfig, inputs: RunInputs = RunInputs()) -> dict[str, Any]:
    """One run: validate, build, train, evaluate, record. Returns the record written (as JSON)."""
    prepared = prepare(cfg, inputs)
    world = distributed.init(prepared.backend)         # under torchrun: every rank joins here, after the checks
    finished = False
    try:
        record = _run_in_world(prepared, world)
        finished = True
        return record
    finally:
        del prepared                                    # the model (FSDP2's hold on the group) goes first
        distributed.end_run(finished)


def _run_in_world(prepared: Prepared, world: distributed.World) -> dict[str, Any]:
    """Skip a finished run, or take the run's lock (rank 0) and run it."""
    cfg = prepared.cfg
    done = prepared.finished()
    if done is not None:
        return done.to_json()
    checkpointer: Optional[Checkpointer] = None
    error = None
    # one writer per run: rank 0 locks the run's checkpoint folder, so a duplicate launch stops here, before the
    # model loads; then look again, in case the other launch finished the run between the first look and the lock
    try:
        if world.is_main:
            check_writable(cfg.results_dir)
        checkpointer = Checkpointer.for_run(prepared.spec, every_steps=int(cfg.checkpoint_every or 0),
                                            every_minutes=prepared.inputs.checkpoint_minutes, world=world)
        if world.is_main:
            clear_notes(checkpointer.folder)           # an earlier attempt's failures are not this one's
    except ConfigError as exc:
        error = exc
    distributed.agree(error)                           # the other ranks stop too, in one line on rank 0
    try:                    # every way out frees the lock (its files go; checkpoints stay for a resume)
        return _locked_run(prepared, checkpointer, world)
    except Exception as exc:            # another rank's failure (loading, training): a note for rank 0's record
        # (not a ConfigError or a divergence: every rank meets those alike, from the same all-reduced numbers, and
        # rank 0 reports its own; not PeerFailed: the rank that failed leaves the note)
        if not (world.is_main or checkpointer is None or isinstance(exc, (ConfigError, PeerFailed, TrainingDiverged))):
            note_failure(checkpointer.folder, world.rank, exc)
        raise
    finally:
        if checkpointer is not None:
            checkpointer.close()


def _locked_run(prepared: Prepared, checkpointer: Optional[Checkpointer], world: distributed.World) -> dict[str, Any]:
    """The part of ``run`` that holds the checkpoint folder's lock: load, train, evaluate, record."""
    cfg, spec = prepared.cfg, prepared.spec
    done = prepared.finished()
    if done is not None:
        if checkpointer is not None:
            checkpointer.discard()
        return done.to_json()
    device = distributed.rank_device(pick_device(cfg.device), world)
    options = LoopOptions.from_run_config(cfg, device)       # divergence_* checked before the model loads
    planned = _planned_phases(cfg, device, world)
    loaded, prov = load(cfg, prepared.method, prepared.task, device)
    prov.update(planned or {})            # beside the measured peak (like for like) and generation's, apart
    tracker = open_tracker(cfg, spec, prepared.inputs) if world.is_main else _no_tracker()
    meters = Meters()
    try:
        with use_precision(cfg.precision):                    # bf16-mixed: autocast in the methods' losses
            result = train_and_evaluate(prepared.method, cfg.method, loaded, prepared.task, options, meters,
                                        tracker.log, checkpoint=checkpointer)
        final_sha = _gather_the_end(prepared, world, meters, prov)    # collectives: a lost rank fails them
    except ConfigError:
        tracker.finish(failed=True)
        raise
    except Exception as exc:                                  # any failure leaves a failed record ...
        failed_at = time.time()
        if world.is_main:                                     # ... naming the rank that failed first
            peers = earlier_failures(checkpointer.folder, failed_at) if checkpointer is not None else []
            _record_failure(spec, exc, meters, prov, peers,
                            checkpoint=checkpointer.latest() if checkpointer is not None else None)
        tracker.finish(failed=True)
        raise
    if not world.is_main:
        return {"status": "ok", "rank": world.rank}     # its checkpointer only stops listening (rank 0 discards)
    return _finish_ok(prepared, result, meters, prov, tracker, final_sha, checkpointer)


def _finish_ok(prepared: Prepared, result: LoopResult, meters: Meters, prov: dict[str, Any], tracker: Any,
               final_sha: str, checkpointer: Optional[Checkpointer]) -> dict[str, Any]:
    """Rank 0, after a run that trained and evaluated: the ok record, then the checkpoint folder goes."""
    try:
        record = write_ok_record(prepared, result, meters, prov, tracker, final_sha)
    except OSError as exc:                  # a full disk, say: the trained run waits in its checkpoint
        tracker.finish(failed=True)
        raise _unwritten_record(exc, prepared.spec, checkpointer) from exc
    if checkpointer is not None:
        checkpointer.discard()
    where = tracker.location or "not logged (logger=none)"
    tracker.finish()
    print_summary(result.metrics, record, prepared.spec.path, where)
    return record.to_json()


def _gather_the_end(prepared: Prepared, world: distributed.World, meters: Meters, prov: dict[str, Any]) -> str:
    """Every rank's peak memory into ``prov`` and ``meters`` (the record's: the largest), and the final parameters'
    hash (every rank gathers the whole tensors, one at a time)."""
    prov.update(distributed.world_provenance(world, meters.peak_memory_bytes))
    meters.peak_memory_bytes = max(prov.get("rank_peak_memory_bytes", [meters.peak_memory_bytes]))
    return tensors_sha256(distributed.whole_parameters(prepared.method.eval_model()))


def load(cfg: DictConfig, method: Method, task: Task, device: torch.device) -> tuple[LoadedModel, dict[str, Any]]:
    """The model on its device, checked against the task's lengths; and the run's provenance."""
    from hizfo.core.models import load_model      # looked up at call time: tests/run_many.py counts the loads
    model_kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    model_kwargs.pop("_target_")
    num_threads = apply_num_threads(cfg.num_threads)       # before the model loads (null: the CPUs we may use)
    loaded = load_model(**model_kwargs, seed=cfg.seed, precision=cfg.precision)
    check_model_positions(task, loaded, trains=cfg.method.max_steps != 0,
                          reserved=method_traits(method).reserved_positions)   # prefix-tuning's virtual tokens
    if loaded.device_map is None:
        loaded.model.to(device)
    return loaded, {**provenance(device), "num_threads": num_threads}


def open_tracker(cfg: DictConfig, spec: RunSpec, inputs: RunInputs) -> Tracker:
    """The W&B run (or none) for this run; its files in Hydra's run folder, else beside the record."""
    run_dir = inputs.output_dir if inputs.output_dir is not None else spec.path.parent
    return Tracker(kind=cfg.logger.kind, project=cfg.logger.project, mode=cfg.logger.mode, run_dir=Path(run_dir),
                   name=spec.name, config=spec.config, entity=cfg.logger.entity, tags=list(cfg.logger.tags),
                   log_every=cfg.logger.log_every, run_id=stable_run_id(spec.path, spec.config_hash),
                   sweep_dir=inputs.sweep_dir)


def _no_tracker() -> Tracker:
    """The tracker of a rank other than 0: it logs nothing (rank 0 logs the run)."""
    return Tracker(kind="none", project="", mode="disabled", run_dir=Path("."), name="", config={})


def _record_failure(spec: RunSpec, exc: Exception, meters: Meters, prov: dict[str, Any],
                    peers: Sequence[RankFailure] = (), checkpoint: Optional[Path] = None) -> None:
    """A failed record for ``exc`` (never in place of an ok one), one line on stderr; ``exc`` marked reported.
    ``peers``: other ranks that failed before rank 0 (hizfo/run/rank_failures.py): the first one is the cause.
    ``checkpoint``: the newest one kept, named in the line when the disk refuses the record as well."""
    error = first_cause(one_line(exc), list(peers)) or one_line(exc)
    tracebacks = [f"rank {p.rank}:\n{p.traceback}" for p in peers] + [traceback.format_exc()]
    record = RunRecord(status="failed", config=spec.config, config_hash=spec.config_hash,
                       costs=Costs.from_meters(meters), provenance=prov, error=error,
                       failed_step=getattr(exc, "step", None), traceback="\n".join(tracebacks))
    current = RunRecord.read(spec.path)
    kept_ok = current is not None and current.status == "ok"
    where = (f"the ok record at {spec.path} was kept (overwrite=true: no failed record replaces it)" if kept_ok
             else f"record at {spec.path}")
    if not kept_ok:
        try:
            record.write(spec.path)
        except OSError as unwritten:        # a full disk: one line, not a traceback (cli.py prints none then)
            where = f"no record could be written to {spec.path} ({one_line(unwritten)}); {kept_training(checkpoint)}"
    print(f"failed: {error}; {where}", file=sys.stderr)
    exc.reported = True                                        # type: ignore[attr-defined]


def kept_training(checkpoint: Optional[Path]) -> str:
    """What a failed run left for its relaunch, in words."""
    return (f"the run's checkpoint {checkpoint} was kept: run the same command again to resume from it"
            if checkpoint is not None else "no checkpoint was kept")


def _planned_phases(cfg: DictConfig, device: torch.device, world: distributed.World) -> Optional[dict[str, int]]:
    """Before the model loads: will it fit? On CUDA the planner's per-GPU peaks at this world size (bytes:
    ``planned_peak_bytes``, training and profiling; ``planned_generation_bytes``), or one
    line, decided by rank 0 and obeyed by every rank (hizfo/run/plan_fit.py). On CPU, rank 0 warns when the
    processes of this machine are predicted over its free RAM, and None: the record's CPU peak is the process's
    resident high-water mark, not comparable with a tensor prediction."""
    from hizfo.run.plan_fit import check_memory_phases, warn_over_free_ram
    if device.type != "cuda":
        if world.is_main:
            try:
                warn_over_free_ram(cfg, int(os.environ.get("LOCAL_WORLD_SIZE", world.size)))
            except ConfigError:                 # a shape not known offline: the load says what is missing
                pass
        return None
    planned, error = None, None
    if world.is_main:
        try:
            planned = check_memory_phases(cfg, device, world.size)
        except ConfigError as exc:
            error = exc
    distributed.agree(error)
    return distributed.from_main(planned)


def _unwritten_record(exc: OSError, spec: RunSpec, checkpointer: Optional[Checkpointer]) -> RecordNotWritten:
    """One line for an ok record the disk refused, saying where the trained run waits for the relaunch."""
    latest = checkpointer.latest() if checkpointer is not None else None
    kept = (f"the trained run is kept in {latest}; free space and run the same command again to evaluate and "
            f"record it without retraining" if latest is not None else
            "no checkpoint holds the trained run (its end-of-training one could not be written either): run it "
            "again once there is space")
    error = RecordNotWritten(f"the ok record {spec.path} could not be written ({one_line(exc)}); {kept}")
    print(f"failed: {error}", file=sys.stderr)
    error.reported = True                                      # type: ignore[attr-defined]
    return error


class RecordNotWritten(RuntimeError):
    """The run trained and evaluated, but its ok record could not be written."""


def write_ok_record(prepared: Prepared, result: LoopResult, meters: Meters, prov: dict[str, Any],
                    tracker: Tracker, final_params_sha256: str) -> RunRecord:
    """The ok record and every prediction, written next to each other; the final figures logged."""
    spec, task = prepared.spec, prepared.task
    summary = result.summary
    costs = Costs.from_meters(meters, summary)
    record = RunRecord(
        status="ok", config=spec.config, config_hash=spec.config_hash, metrics=result.metrics, costs=costs,
        partition=summary.partition, method_summary=summary.details, provenance=prov,
        curve=Curve(**result.curve(prepared.cfg.curve_every)), zo_seeds=result.zo_seeds,
        final_train_loss=result.losses[-1] if result.losses else None,
        final_params_sha256=final_params_sha256,
        samples=[{"prompt": e.prompt[-300:], "prediction": p, "references": e.references}
                 for e, p in zip(task.examples("eval"), result.predictions[:5])])
    tracker.log_final(meters.steps, {**{f"eval/{k}": v for k, v in result.metrics.items()},
                                     **{f"costs/{k}": v for k, v in vars(costs).items()
                                        if isinstance(v, (int, float)) and not isinstance(v, bool)}})
    write_jsonl_atomic(spec.predictions_path, prediction_rows(task.examples("eval"), result.predictions))
    try:
        record.write(spec.path)
    except OSError:                     # no predictions without their record: the relaunch writes both
        _remove_quietly(spec.predictions_path)
        raise
    return record


def _remove_quietly(path: Path) -> None:
    """Delete ``path`` if it is there; a disk that refuses even that leaves it (the relaunch replaces it)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def print_summary(metrics: dict[str, Any], record: RunRecord, path: Path, where: str) -> None:
    """The run's last lines: metrics, costs, where the record and the W&B run are."""
    costs = record.costs
    shown = ", ".join(f"{k}={v:.2f}" for k, v in metrics.items() if isinstance(v, (int, float)))
    print(f"metrics: {shown}")
    resumed = f", resumed {record.resumed}x" if record.resumed else ""
    print(f"costs: peak {costs.peak_memory_gb:.2f} GB ({costs.memory_kind}), train {costs.train_seconds:.1f} s"
          f"{resumed}, eval {costs.eval_seconds:.1f} s, {costs.n_forward} forwards / {costs.n_backward} backwards")
    print(f"record: {path}")
    print(f"wandb: {where}")
