"""The one training loop every method runs in: seeded data order (hizfo/run/batching.py), meters, progress,
checkpoints, the curve's epoch-end points; the evaluation it calls is hizfo/run/evaluation.py.

``train_and_evaluate`` is a short sequence of named steps: plan the steps, build the method's context, (optionally)
score the untrained model, train (``Training``: set-up, restore, epochs of steps), then evaluate by generation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
from tqdm.auto import tqdm

from hizfo.config import MethodConfig
from hizfo.core import distributed
from hizfo.core.methods import Batch, Method, MethodSummary, TrainContext
from hizfo.core.models import LoadedModel
from hizfo.run.batching import Streams, encode_split
from hizfo.run.divergence import DivergenceWatch, divergence_watch
from hizfo.run.evaluation import eval_loss, evaluate, evaluate_model_only, input_device
from hizfo.run.meters import Meters
from hizfo.run.progress import progress
from hizfo.tasks.base import Task, check_fits

if TYPE_CHECKING:                     # for the signature only: loop.py loads without the checkpoint stack
    from hizfo.run.checkpoint import Checkpointer

ZO_SEED_OFFSET = 424242        # the run's generator of ZO step seeds: seed + 424242
Log = Callable[[int, dict[str, float]], None]


@dataclass
class LoopState:
    """Where training stands: enough to resume exactly."""
    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    losses: list[float] = field(default_factory=list)
    zo_seeds_used: list[int] = field(default_factory=list)
    epoch_evals: list[dict[str, Any]] = field(default_factory=list)   # the curve's epoch-end evaluations


def loss_curve(losses: list[float], every: int) -> list[list[float]]:
    """``[[last step of the window, mean loss over the window], ...]`` for windows of ``every`` steps."""
    every = max(1, every)
    return [[min(start + every, len(losses)), sum(losses[start:start + every]) / len(losses[start:start + every])]
            for start in range(0, len(losses), every)]


@dataclass
class LoopResult:
    metrics: dict[str, float]
    predictions: list[str]
    history: list[dict[str, float]]
    summary: MethodSummary
    zo_seeds: list[int]
    losses: list[float] = field(default_factory=list)                  # every step's, resumed runs included
    epoch_evals: list[dict[str, Any]] = field(default_factory=list)

    def curve(self, every: int) -> dict[str, Any]:
        """The record's learning curve: windowed training loss and the epoch-end evaluations."""
        return {"every": every, "train_loss": loss_curve(self.losses, every), "eval": self.epoch_evals}


@dataclass
class LoopOptions:
    """How the shared loop runs a method: the device, the seed and the run's loop keys (conf/config.yaml)."""
    device: torch.device
    seed: int = 0
    train_dropout: bool = False               # dropout on while training, for every method alike
    eval_before_training: bool = False        # also score the untrained model (``before_*`` metrics)
    eval_every_epoch: bool = False            # the task's metrics at every epoch's end, in the curve
    eval_loss_every_epoch: bool = True        # the evaluation split's loss at every epoch's end, in the curve
    profile_shards: bool = False              # several processes: a profile on FSDP2's shards (TrainContext)
    divergence: DivergenceWatch = field(default_factory=DivergenceWatch)

    @classmethod
    def from_run_config(cls, cfg: Any, device: torch.device) -> "LoopOptions":
        """The options a run's composed config sets (``divergence_*`` checked here: one line if out of range)."""
        return cls(device=device, seed=int(cfg.seed), train_dropout=bool(cfg.train_dropout),
                   eval_before_training=bool(cfg.eval_before_training), eval_every_epoch=bool(cfg.eval_every_epoch),
                   eval_loss_every_epoch=bool(cfg.eval_loss_every_epoch),
                   profile_shards=bool(cfg.profile_shards),
                   divergence=divergence_watch(cfg.divergence_factor, cfg.divergence_patience))


@dataclass(frozen=True)
class StepPlan:
    """How many update steps an epoch has and the run takes (``epochs`` × per epoch, capped by ``max_steps``)."""
    steps_per_epoch: int = 0
    total_steps: int = 0

    @classmethod
    def of(cls, method_cfg: Any, streams: Streams) -> "StepPlan":
        if method_cfg.max_steps == 0:                                   # max_steps 0: evaluation only
            return cls()
        steps_per_epoch = len(streams.get("train"))
        if streams.holds_dev():
            streams.get("dev")
        total = method_cfg.epochs * steps_per_epoch
        if method_cfg.max_steps is not None:
            total = min(total, method_cfg.max_steps)
        return cls(steps_per_epoch=steps_per_epoch, total_steps=total)


def train_context(loaded: LoadedModel, task: Task, streams: Streams, plan: StepPlan, zo_seeds: torch.Generator,
                  options: LoopOptions) -> TrainContext:
    """What a method's set-up sees: the model, the task, the step plan and the endless batch streams."""
    n_train, n_dev = streams.sizes()
    return TrainContext(loaded=loaded, task=task, device=streams.device, total_steps=plan.total_steps,
                        steps_per_epoch=plan.steps_per_epoch, zo_seeds=zo_seeds,
                        train_batches=lambda: streams.endless("train"), dev_batches=lambda: streams.endless("dev"),
                        train_dropout=options.train_dropout, n_train=n_train, n_dev=n_dev,
                        whole_train_batches=lambda: streams.endless("train", whole=True),
                        profile_shards=options.profile_shards)


class Training:
    """The training phase of one run: the method's set-up, a restore from checkpoint, then epochs of steps, each
    step metered, logged, watched for divergence and (at an epoch's end) followed by the curve's point."""

    def __init__(self, method: Method, loaded: LoadedModel, task: Task, streams: Streams, plan: StepPlan,
                 options: LoopOptions, meters: Meters, log: Log, checkpoint: Optional[Any],
                 zo_seeds: torch.Generator) -> None:
        self.method, self.loaded, self.task, self.streams, self.plan = method, loaded, task, streams, plan
        self.options, self.meters, self.log, self.checkpoint, self.zo_seeds = options, meters, log, checkpoint, zo_seeds
        self.state = LoopState()
        self.history: list[dict[str, float]] = []
        self.eval_encoded = (encode_split(task, loaded, task.examples("eval"))   # for the curve's eval loss
                             if streams.trains and options.eval_loss_every_epoch else None)

    def run(self, ctx: TrainContext) -> LoopState:
        """Set up, resume if a checkpoint exists, train to the planned step; the state it ends in."""
        device, meters, state = self.options.device, self.meters, self.state
        self.loaded.model.train(self.options.train_dropout)     # one dropout setting for every method
        with meters.timing("train_seconds", device):
            with meters.timing("setup_seconds", device):
                self.method.setup(ctx)
            self.method.eval_model().train(self.options.train_dropout)   # peft wrappers add modules: set it again
            self._restore()
            quiet = None if distributed.current().is_main else True              # progress from rank 0 only
            bar = progress(total=self.plan.total_steps, initial=state.step, desc="train", unit="step", disable=quiet)
            while state.step < self.plan.total_steps:
                if self._epoch(bar):
                    break
            bar.close()
            if self.checkpoint is not None:
                self.checkpoint.training_finished(self.method, state, meters, self.zo_seeds)   # signals: at once
            meters.read_peak(device)
        return state

    def _restore(self) -> None:
        if self.checkpoint is not None and self.checkpoint.restore(self.method, self.state, self.meters,
                                                                   self.zo_seeds) and distributed.current().is_main:
            tqdm.write(f"resumed from {self.checkpoint.path} at step {self.state.step}")
        self.options.divergence.replay(self.state.losses)    # a resumed run keeps its reference loss and count

    def _epoch(self, bar: Any) -> bool:
        """The current epoch's remaining batches; True when the planned steps are done within it."""
        state = self.state
        if state.batch_in_epoch == 0:
            with self.meters.timing("setup_seconds", self.options.device):   # GreenTrainer re-selects here
                self.method.on_epoch_start(state.epoch)
        for batch in self.streams.get("train").epoch(state.epoch, start=state.batch_in_epoch):
            self._step(batch, bar)
            if state.step >= self.plan.total_steps:
                return True
        state.epoch += 1
        state.batch_in_epoch = 0
        return False

    def _step(self, batch: Batch, bar: Any) -> None:
        """One update: metered, checked for divergence, logged; the epoch's end point; a checkpoint when due."""
        state, meters = self.state, self.meters
        result = self.method.train_step(batch)
        self.options.divergence.check(state.step, result.loss)
        state.step += 1
        state.batch_in_epoch += 1
        state.losses.append(result.loss)
        meters.steps = state.step
        meters.n_forward += result.n_forward
        meters.n_backward += result.n_backward
        if "zo_seed" in result.logs:
            state.zo_seeds_used.append(int(result.logs["zo_seed"]))
        row = {"train/loss": result.loss, "train/lr": self.method.current_lr(), "train/epoch": state.epoch,
               **{f"train/{k}": v for k, v in result.logs.items() if k != "zo_seed"}}
        self.history.append(row)
        self.log(state.step, row)
        bar.update(1)
        bar.set_postfix(loss=f"{result.loss:.4f}", epoch=state.epoch)
        if state.batch_in_epoch == self.plan.steps_per_epoch:
            self._end_of_epoch()
        if self.checkpoint is not None:
            self.checkpoint.maybe_save(self.method, state, meters, self.zo_seeds)

    def _end_of_epoch(self) -> None:
        """The curve's epoch-end point (eval loss; with eval_every_epoch also the task's metrics), timed as
        evaluation, not training."""
        state, device, method = self.state, self.options.device, self.method
        entry: dict[str, Any] = {"epoch": state.epoch, "step": state.step}
        self.meters.read_peak(device)
        with self.meters.timing("eval_seconds", device), self.meters.paused("train_seconds", device), \
                distributed.evaluating(method.eval_model()):
            if self.eval_encoded is not None:
                entry["eval_loss"] = eval_loss(method.eval_model(), self.eval_encoded, self.task,
                                               self.loaded.tokenizer.pad_token_id,
                                               input_device(method.eval_model(), device))
            if self.options.eval_every_epoch and state.step < self.plan.total_steps:   # the final one follows
                epoch_metrics, _ = evaluate(method, self.loaded, self.task, device)
                entry["metrics"] = epoch_metrics
                self.log(state.step, {f"eval/{k}": v for k, v in epoch_metrics.items()})
        if device.type == "cuda":      # the measured peak is training's and profiling's, as the planned one (plan_fit)
            self.meters.reset_peak(device)
        if len(entry) > 2:
            state.epoch_evals.append(entry)
            if "eval_loss" in entry:                                   # W&B: on the step axis, beside the curve
                self.log(state.step, {"eval/loss": entry["eval_loss"], "eval/epoch": state.epoch})


def train_and_evaluate(method: Method, method_cfg: MethodConfig, loaded: LoadedModel, task: Task,
                       options: LoopOptions, meters: Meters, log: Optional[Log] = None,
                       checkpoint: Optional[Checkpointer] = None) -> LoopResult:
    """Set the method up, train it for its epochs (or ``max_steps``), then evaluate by generation."""
    device = options.device
    trains = method_cfg.max_steps != 0                               # max_steps 0: evaluation only
    check_fits(task, loaded.tokenizer, "eval")
    streams = Streams(method, task, loaded, options.seed, input_device(loaded.model, device), trains,
                      distributed.current())
    plan = StepPlan.of(method_cfg, streams)
    zo_seeds = torch.Generator().manual_seed(options.seed + ZO_SEED_OFFSET)
    ctx = train_context(loaded, task, streams, plan, zo_seeds, options)
    before: dict[str, float] = {}
    if options.eval_before_training:
        with meters.timing("eval_seconds", device):
            before, _ = evaluate_model_only(loaded, task, device)
    training = Training(method, loaded, task, streams, plan, options, meters, log or (lambda step, row: None),
                        checkpoint, zo_seeds)
    meters.reset_peak(device)
    state = training.run(ctx)
    summary = method.summary()
    meters.n_forward += summary.setup_forwards                    # profiling's passes, outside the update steps
    meters.n_backward += summary.setup_backwards
    with meters.timing("eval_seconds", device), distributed.evaluating(method.eval_model()):
        metrics, predictions = evaluate(method, loaded, task, device)
    if before:
        metrics.update({f"before_{k}": v for k, v in before.items()})
    return LoopResult(metrics=metrics, predictions=predictions, history=training.history, summary=summary,
                      zo_seeds=state.zo_seeds_used, losses=state.losses, epoch_evals=state.epoch_evals)
