"""The one training loop every method runs in: seeded data order, meters, progress, checkpoints, the curve's epoch-end
points; the evaluation it calls is hizfo/run/evaluation.py."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from hizfo.errors import TrainingDiverged
from hizfo.run.meters import Meters
from hizfo.core.methods import Batch, Method, MethodSummary, TrainContext, method_traits
from hizfo.core.models import LoadedModel
from hizfo.run.evaluation import eval_loss, evaluate, evaluate_model_only, input_device
from hizfo.tasks.base import Example, Task, check_fits, collate_train, encode_train


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(choice: str) -> torch.device:
    """``auto``: CUDA when present, else CPU."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def length_grouped_batches(lengths: list[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Seeded batches of examples of similar length, in a seeded order; every index in exactly one batch.

    The grouping is transformers' ``get_length_grouped_indices`` (trainer_pt_utils.py, the Trainer's
    ``group_by_length``): a random permutation cut into mega-batches of up to 50 batches, each sorted by length.
    The batches are then put in a second seeded random order, so the long batches do not all come first (the
    one short batch, when the split does not divide evenly, goes anywhere in the epoch).
    """
    from transformers.trainer_pt_utils import get_length_grouped_indices
    grouped = get_length_grouped_indices(lengths, batch_size, generator=generator)
    batches = [grouped[i:i + batch_size] for i in range(0, len(grouped), batch_size)]
    return [batches[b] for b in torch.randperm(len(batches), generator=generator).tolist()]


class BatchStream:
    """Training batches in a seeded order: epoch e uses permutation randperm(n, seed=(seed, e)).

    ``group_by_length``: the epoch's batches are :func:`length_grouped_batches` from the same seeded generator,
    so a batch holds sequences of similar length and carries little padding.
    """

    def __init__(self, encoded: list[dict[str, list[int]]], batch_size: int, pad_token_id: int, seed: int,
                 device: torch.device, group_by_length: bool = False) -> None:
        self.encoded = encoded
        self.batch_size = batch_size
        self.pad_token_id = pad_token_id
        self.seed = seed
        self.device = device
        self.group_by_length = group_by_length

    def __len__(self) -> int:
        return math.ceil(len(self.encoded) / self.batch_size)

    def batches(self, epoch: int) -> list[list[int]]:
        """The example indices of each batch of one epoch, in order (each index exactly once)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.group_by_length:
            return length_grouped_batches([len(e["input_ids"]) for e in self.encoded], self.batch_size, generator)
        order = torch.randperm(len(self.encoded), generator=generator).tolist()
        return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of one epoch, from batch index ``start`` on (exact resume)."""
        for indices in self.batches(epoch)[start:]:
            rows = [self.encoded[i] for i in indices]
            yield {k: v.to(self.device) for k, v in collate_train(rows, self.pad_token_id).items()}

    def endless(self, salt: int) -> Iterator[Batch]:
        """An endless stream (for methods that draw extra batches), in its own seeded order."""
        epoch = 0
        while True:
            yield from BatchStream(self.encoded, self.batch_size, self.pad_token_id, self.seed + salt,
                                   self.device, self.group_by_length).epoch(epoch)
            epoch += 1


@dataclass
class LoopState:
    """Where training stands: enough to resume exactly."""
    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    losses: list[float] = field(default_factory=list)
    zo_seeds_used: list[int] = field(default_factory=list)
    epoch_evals: list[dict[str, Any]] = field(default_factory=list)   # the curve's epoch-end evaluations


def encode_split(task: Task, loaded: LoadedModel, examples: list[Example]) -> list[dict[str, list[int]]]:
    return [encode_train(e, loaded.tokenizer, task.cfg.max_input_length, task.cfg.max_target_length)
            for e in examples]


@dataclass
class DivergenceWatch:
    """Stop a run whose loss is not finite, or stays above ``factor`` × its first loss for ``patience`` steps."""
    factor: float = 10.0                 # 0: only non-finite losses stop a run
    patience: int = 20
    first_loss: Optional[float] = None
    steps_above: int = 0

    def check(self, step: int, loss: float) -> None:
        if not math.isfinite(loss):
            raise TrainingDiverged(step, loss)
        if self.first_loss is None:
            self.first_loss = loss
        if self.factor <= 0:
            return
        self.steps_above = self.steps_above + 1 if loss > self.factor * self.first_loss else 0
        if self.steps_above >= self.patience:
            raise TrainingDiverged(step, loss, f"stayed above {self.factor:g} x the first loss "
                                               f"({self.first_loss:.4g}) for {self.patience} steps")


def divergence_watch(factor: float, patience: int) -> DivergenceWatch:
    """A checked ``DivergenceWatch`` from the run's ``divergence_factor`` / ``divergence_patience``."""
    from hizfo.errors import ConfigError
    if not (factor >= 0 and math.isfinite(factor)):
        raise ConfigError(f"divergence_factor: must be a finite number >= 0 (0 turns the check off), got {factor}")
    if patience < 1:
        raise ConfigError(f"divergence_patience: must be >= 1, got {patience}")
    return DivergenceWatch(factor=factor, patience=patience)


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


def training_examples(method: Method, task: Task, trains: bool = True) -> tuple[list[Example], list[Example]]:
    """The examples the training stream draws from, and the dev split a method with ``holds_out_dev`` draws
    its dev batches from (taken out of the training stream; one line if too few are left for a batch when the run
    trains: an evaluation-only run needs no full batch)."""
    if method_traits(method).holds_out_dev:
        return task.train_dev_split(batch_size=task.cfg.batch_size if trains else None)
    return task.examples("train"), []


@dataclass
class LoopOptions:
    """How the shared loop runs a method: the device, the seed and the run's loop keys (conf/config.yaml)."""
    device: torch.device
    seed: int = 0
    train_dropout: bool = False               # dropout on while training, for every method alike
    eval_before_training: bool = False        # also score the untrained model (``before_*`` metrics)
    eval_every_epoch: bool = False            # the task's metrics at every epoch's end, in the curve
    eval_loss_every_epoch: bool = True        # the evaluation split's loss at every epoch's end, in the curve
    divergence: DivergenceWatch = field(default_factory=DivergenceWatch)

    @classmethod
    def from_run_config(cls, cfg: Any, device: torch.device) -> "LoopOptions":
        """The options a run's composed config sets (``divergence_*`` checked here: one line if out of range)."""
        return cls(device=device, seed=int(cfg.seed), train_dropout=bool(cfg.train_dropout),
                   eval_before_training=bool(cfg.eval_before_training), eval_every_epoch=bool(cfg.eval_every_epoch),
                   eval_loss_every_epoch=bool(cfg.eval_loss_every_epoch),
                   divergence=divergence_watch(cfg.divergence_factor, cfg.divergence_patience))


def train_and_evaluate(method: Method, method_cfg: Any, loaded: LoadedModel, task: Task, options: LoopOptions,
                       meters: Meters, log: Optional[Callable[[int, dict[str, float]], None]] = None,
                       checkpoint: Optional[Any] = None) -> LoopResult:
    """Set the method up, train it for its epochs (or ``max_steps``), then evaluate by generation."""
    device, seed, divergence = options.device, options.seed, options.divergence
    log = log or (lambda step, row: None)
    tokenizer = loaded.tokenizer
    trains = method_cfg.max_steps != 0                               # max_steps 0: evaluation only
    check_fits(task, tokenizer, "eval")
    model_device = input_device(loaded.model, device)
    streams: dict[str, BatchStream] = {}
    split_rows: dict[str, list[Example]] = {}

    def stream(split: str) -> BatchStream:
        """The train or dev batches, encoded on first use: an evaluation-only run (max_steps 0) reads training
        data only if its method's set-up asks for it (Hi-ZFO's and GreenTrainer's profiling batch, Bilevel-ZOFO's
        streams), so zero-shot needs none. A method that holds out a dev split trains without it."""
        if split not in streams:
            check_fits(task, tokenizer, "train")
            if not split_rows:
                split_rows["train"], split_rows["dev"] = training_examples(method, task, trains)
            rows = split_rows[split] if (split == "train" or split_rows["dev"]) else task.validation_examples()
            streams[split] = BatchStream(encode_split(task, loaded, rows), task.cfg.batch_size,
                                         tokenizer.pad_token_id, seed if split == "train" else seed + 7, model_device,
                                         task.cfg.group_by_length)
        return streams[split]

    steps_per_epoch = total_steps = 0
    if trains:
        steps_per_epoch = len(stream("train"))
        if split_rows["dev"]:
            stream("dev")
        total_steps = method_cfg.epochs * steps_per_epoch
        if method_cfg.max_steps is not None:
            total_steps = min(total_steps, method_cfg.max_steps)
    zo_seeds = torch.Generator().manual_seed(seed + 424242)
    ctx = TrainContext(loaded=loaded, task=task, device=model_device, total_steps=total_steps,
                       steps_per_epoch=steps_per_epoch, zo_seeds=zo_seeds,
                       train_batches=lambda: stream("train").endless(salt=101),
                       dev_batches=lambda: stream("dev").endless(salt=202), train_dropout=options.train_dropout,
                       n_train=len(split_rows.get("train", [])), n_dev=len(split_rows.get("dev", [])))
    history: list[dict[str, float]] = []
    before: dict[str, float] = {}
    if options.eval_before_training:
        with meters.timing("eval_seconds", device):
            before, _ = evaluate_model_only(loaded, task, device)

    eval_encoded = encode_split(task, loaded, task.examples("eval")) if trains and options.eval_loss_every_epoch else None

    def end_of_epoch(state: LoopState) -> None:
        """The curve's epoch-end point (eval loss; with eval_every_epoch also the task's metrics), not timed as training."""
        entry: dict[str, Any] = {"epoch": state.epoch, "step": state.step}
        meters.read_peak(device)
        with meters.timing("eval_seconds", device), meters.paused("train_seconds", device):
            if eval_encoded is not None:
                entry["eval_loss"] = eval_loss(method.eval_model(), eval_encoded, task, tokenizer.pad_token_id,
                                               input_device(method.eval_model(), device))
            if options.eval_every_epoch and state.step < total_steps:      # the final evaluation follows anyway
                epoch_metrics, _ = evaluate(method, loaded, task, device)
                entry["metrics"] = epoch_metrics
                log(state.step, {f"eval/{k}": v for k, v in epoch_metrics.items()})
        if len(entry) > 2:
            state.epoch_evals.append(entry)

    meters.reset_peak(device)
    state = LoopState()
    seeds_used = state.zo_seeds_used                              # checkpointed with the loop position
    loaded.model.train(options.train_dropout)                    # one dropout setting for every method (train_dropout)
    with meters.timing("train_seconds", device):
        with meters.timing("setup_seconds", device):
            method.setup(ctx)
        method.eval_model().train(options.train_dropout)           # peft wrappers add modules: set the mode again
        if checkpoint is not None:
            restored = checkpoint.restore(method, state, meters, zo_seeds)
            if restored:
                tqdm.write(f"resumed from {checkpoint.path} at step {state.step}")
        if state.losses:
            divergence.first_loss = state.losses[0]             # a resumed run keeps its reference loss
        bar = tqdm(total=total_steps, initial=state.step, desc="train", dynamic_ncols=True)
        while state.step < total_steps:
            if state.batch_in_epoch == 0:
                with meters.timing("setup_seconds", device):       # GreenTrainer re-selects here
                    method.on_epoch_start(state.epoch)
            for batch in stream("train").epoch(state.epoch, start=state.batch_in_epoch):
                result = method.train_step(batch)
                divergence.check(state.step, result.loss)
                state.step += 1
                state.batch_in_epoch += 1
                state.losses.append(result.loss)
                meters.steps = state.step
                meters.n_forward += result.n_forward
                meters.n_backward += result.n_backward
                if "zo_seed" in result.logs:
                    seeds_used.append(int(result.logs["zo_seed"]))
                row = {"train/loss": result.loss, "train/lr": method.current_lr(), "train/epoch": state.epoch,
                       **{f"train/{k}": v for k, v in result.logs.items() if k != "zo_seed"}}
                history.append(row)
                log(state.step, row)
                bar.update(1)
                bar.set_postfix(loss=f"{result.loss:.4f}", epoch=state.epoch)
                if state.batch_in_epoch == steps_per_epoch:
                    end_of_epoch(state)
                if checkpoint is not None:
                    checkpoint.maybe_save(method, state, meters, zo_seeds)
                if state.step >= total_steps:
                    break
            else:
                state.epoch += 1
                state.batch_in_epoch = 0
                continue
            break
        bar.close()
        if checkpoint is not None:
            checkpoint.training_finished(method, state, meters, zo_seeds)   # signals now answered at once
        meters.read_peak(device)
    summary = method.summary()
    meters.n_forward += summary.setup_forwards                    # profiling's passes, outside the update steps
    meters.n_backward += summary.setup_backwards
    with meters.timing("eval_seconds", device):
        metrics, predictions = evaluate(method, loaded, task, device)
    if before:
        metrics.update({f"before_{k}": v for k, v in before.items()})
    return LoopResult(metrics=metrics, predictions=predictions, history=history, summary=summary,
                      zo_seeds=seeds_used, losses=state.losses, epoch_evals=state.epoch_evals)
