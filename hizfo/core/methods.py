"""How a method plugs into the shared loop: a small Protocol, plus plain functions the methods share."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol, runtime_checkable

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from hizfo.config import check_common, check_lr  # noqa: F401  (the schemas' checks, re-exported to the methods)
from hizfo.errors import ConfigError
from hizfo.core.distributed import current, local, summed
from hizfo.core.models import LoadedModel
from hizfo.core.precision import ChangeMonitor, MasterWeights, compute_context, is_low_precision
from hizfo.tasks.base import Task

Batch = dict[str, torch.Tensor]


@dataclass
class StepResult:
    """What one update step reports: its training loss and what it spent."""
    loss: float
    n_forward: int
    n_backward: int
    logs: dict[str, float] = field(default_factory=dict)  # extra per-step scalars for W&B


@dataclass
class TrainContext:
    """Everything a method may need at set-up."""
    loaded: LoadedModel
    task: Task
    device: torch.device
    total_steps: int
    steps_per_epoch: int
    zo_seeds: torch.Generator           # the run's generator for ZO step seeds (checkpointed)
    train_batches: Callable[[], Iterator[Batch]]  # an endless, seeded stream of training batches
    dev_batches: Callable[[], Iterator[Batch]]    # an endless, seeded stream of dev batches
    train_dropout: bool = False         # the run's one dropout setting; the loop sets the model's mode from it
    n_train: int = 0                    # training examples in the training stream
    n_dev: int = 0                      # dev examples held out of it (a method with ``holds_out_dev``)
    # the same training batches whole, not cut into the ranks' slices (several processes: a profile every rank
    # computes alike, as one process would); None: ``train_batches``, which in one process are whole anyway
    whole_train_batches: Optional[Callable[[], Iterator[Batch]]] = None
    # several processes: profile on FSDP2's shards, each rank its rows (memory 1/N; the selection is one process's up
    # to summation order), instead of the whole model on every rank (exactly one process's); run key profile_shards
    profile_shards: bool = False

    def profile_batches(self) -> Iterator[Batch]:
        """The whole global batches, for a profile that must select the same tensors on every rank."""
        return (self.whole_train_batches or self.train_batches)()


@dataclass
class MethodSummary:
    """What a method reports about itself after training (the record's ``partition`` and ``method_summary``)."""
    trainable_params: int
    total_params: int
    partition: dict[str, Any]                 # FO / ZO / frozen counts; selecting methods add names, sets, budget
    profiling_seconds: float = 0.0            # importance profiling, every time it ran (GreenTrainer: 3 times)
    selection_seconds: float = 0.0
    profilings: int = 0
    setup_forwards: int = 0                   # passes spent outside the update steps (profiling)
    setup_backwards: int = 0
    details: dict[str, Any] = field(default_factory=dict)   # method-specific values (η_ZO, GT's selections)


def partition_counts(model: nn.Module, fo: Iterable[torch.Tensor], zo: Iterable[torch.Tensor] = ()) -> dict[str, int]:
    """FO / ZO / frozen tensor and parameter counts; every tensor of ``model`` not in ``fo`` or ``zo`` is frozen."""
    everything = [p for _, p in unique_named_parameters(model)]
    fo_ids, zo_ids = {id(p) for p in fo}, {id(p) for p in zo}
    fo_list = [p for p in everything if id(p) in fo_ids]
    zo_list = [p for p in everything if id(p) in zo_ids]
    frozen = [p for p in everything if id(p) not in fo_ids | zo_ids]
    return {"fo_tensors": len(fo_list), "fo_params": count_params(fo_list), "zo_tensors": len(zo_list),
            "zo_params": count_params(zo_list), "frozen_tensors": len(frozen), "frozen_params": count_params(frozen)}


def simple_summary(model: nn.Module, fo: Iterable[torch.Tensor], zo: Iterable[torch.Tensor] = (),
                   trainable_params: Optional[int] = None) -> MethodSummary:
    """The summary of a method with a fixed trainable set and no profiling."""
    counts = partition_counts(model, list(fo), list(zo))
    total = counts["fo_params"] + counts["zo_params"] + counts["frozen_params"]
    trainable = counts["fo_params"] + counts["zo_params"] if trainable_params is None else trainable_params
    return MethodSummary(trainable_params=trainable, total_params=total, partition=counts)


@runtime_checkable
class Method(Protocol):
    """The interface every method meets; the loop never asks which method it drives.

    A method may also set ``holds_out_dev = True``: the loop then takes a dev split out of the training examples
    (``Task.train_dev_split``) and serves it through ``TrainContext.dev_batches``; and ``reserved_positions``
    (an int): the model positions it takes before every prompt (prefix-tuning's virtual tokens), which the
    length check leaves free. ``holds_out_dev`` and ``reserved_positions`` read as False / 0 where a method
    does not set them (``method_traits``).
    """

    def setup(self, ctx: TrainContext) -> None:
        """Profiling, partitioning, optimizers: counted in training time."""

    def train_step(self, batch: Batch) -> StepResult:
        """One update on one batch."""

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for methods that act per epoch (GreenTrainer re-selects every ``interval`` epochs)."""

    def eval_model(self) -> nn.Module:
        """The model to generate with (an adapted peft model for LoRA / prefix)."""

    def summary(self) -> MethodSummary:
        """Trainable parameter count, the FO/ZO/frozen partition, and what profiling cost."""

    def current_lr(self) -> float:
        """The learning rate the next step will use."""

    def state_dict(self) -> dict[str, Any]:
        """Optimizer/scheduler/method state for checkpoints (parameters are saved by the loop)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


@dataclass(frozen=True)
class MethodTraits:
    """What the loop and the run's checks ask of a method instance, beyond the protocol's calls."""
    holds_out_dev: bool = False
    reserved_positions: int = 0
    data_parallel: bool = False     # runs on several processes (hizfo/core/distributed.py): every rank its slice


def method_traits(method: Any) -> MethodTraits:
    """A method's ``holds_out_dev``, ``reserved_positions`` and ``data_parallel``, False / 0 where it does not set
    them."""
    return MethodTraits(holds_out_dev=bool(getattr(method, "holds_out_dev", False)),
                        reserved_positions=int(getattr(method, "reserved_positions", 0) or 0),
                        data_parallel=bool(getattr(method, "data_parallel", False)))


# ---------------------------------------------------------------------------------------------------
# shared pieces


def causal_lm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean token cross-entropy on the target tokens (labels are -100 elsewhere).

    Under precision=bf16-mixed the forward runs in bf16 autocast (hizfo.core.precision.compute_context); its backward
    follows the dtypes the forward recorded. The loss itself is fp32 (HF upcasts the logits).
    """
    with compute_context(batch["input_ids"].device):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=batch["labels"]).loss


def same_rng_streams(device: torch.device) -> Callable[[], None]:
    """Snapshot the RNG dropout draws from; calling the result restores it, so a second stream sees the same masks.

    Every ZO method that compares two losses with dropout on (``train_dropout=true``) replays the masks: the loss
    difference must measure the perturbation, not two dropout draws (docs/design.md, "Dropout").
    """
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore() -> None:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
    return restore


def replay_rng_if_training(model: nn.Module, device: torch.device) -> Callable[[], None]:
    """``same_rng_streams`` when the model is in train mode (dropout active), else a no-op."""
    return same_rng_streams(device) if model.training else (lambda: None)


def no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases and norm weights get no weight decay (as in MeZO's and HF's trainers)."""
    lowered = name.lower()
    return param.ndim < 2 or "norm" in lowered or "bias" in lowered


def adamw(named_params: Iterable[tuple[str, nn.Parameter]], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with decay kept off biases and norms; state exists only for the tensors passed in."""
    decay, plain = [], []
    for name, p in named_params:
        (plain if no_decay(name, p) else decay).append(p)
    groups = [g for g in ({"params": decay, "weight_decay": weight_decay},
                          {"params": plain, "weight_decay": 0.0}) if g["params"]]
    if not groups:
        raise ConfigError("method: no trainable tensors were selected")
    return torch.optim.AdamW(groups, lr=lr)


def schedule_factor(schedule: str, step: int, total_steps: int) -> float:
    """The lr multiplier at ``step``: linear decay to 0 with no warm-up (GreenTrainer, paper A.2), or constant."""
    if schedule == "constant":
        return 1.0
    return max(0.0, 1.0 - step / max(1, total_steps))


def lr_schedule(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """``schedule_factor`` as a torch scheduler (the FO optimizers); ZO-SGD rates call it directly."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule_factor(schedule, step, total_steps))


def unique_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Named parameters with tied weights listed once (OPT's lm_head is embed_tokens)."""
    return list(model.named_parameters(remove_duplicate=True))


def set_trainable(model: nn.Module, names: set[str]) -> None:
    """requires_grad on exactly the named tensors."""
    for name, p in unique_named_parameters(model):
        p.requires_grad_(name in names)


def count_params(params: Iterable[torch.Tensor]) -> int:
    return sum(p.numel() for p in params)


class FirstOrderTrainer:
    """AdamW + schedule over a fixed set of tensors: the FO half that several methods share."""

    def __init__(self, model: nn.Module, names: set[str], lr: float, weight_decay: float, schedule: str,
                 total_steps: int, grad_clip: Optional[float] = None) -> None:
        self.model = model
        named = [(n, p) for n, p in unique_named_parameters(model) if n in names]
        self.params = [p for _, p in named]
        # bf16 weights (precision=bf16): AdamW steps fp32 masters, so steps below bf16's spacing are not lost
        self.masters = MasterWeights(self.params) if any(is_low_precision(p) for p in self.params) else None
        stepped = self.masters.masters if self.masters else self.params
        self.optimizer = adamw([(n, t) for (n, _), t in zip(named, stepped)], lr, weight_decay)
        self.scheduler = lr_schedule(self.optimizer, schedule, total_steps)
        self.grad_clip = grad_clip
        self.monitor = ChangeMonitor()
        self.changed_fraction: Optional[float] = None   # share of the stepped elements the last step changed
        self.sharded = current().size > 1 and any(isinstance(t, DTensor) for t in stepped)

    def step(self) -> None:
        if self.masters:
            self.masters.take_grads()
        stepped = self.masters.masters if self.masters else self.params
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(stepped, self.grad_clip)
        with_grad = [local(t) for t in stepped if t.grad is not None]    # (GreenTrainer: the selected ones)
        self.monitor.before(with_grad)                                   # (sharded: this rank's shards)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.masters:
            self.masters.publish()
        changed, total = self.monitor.counts(with_grad)
        if self.sharded:                             # every rank's shards: the whole tensors' share
            changed, total = summed([changed, total], current())
        self.changed_fraction = changed / total if total else None

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.masters:
            state["masters"] = self.masters.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.masters and "masters" in state:
            self.masters.load_state_dict(state["masters"])      # before the optimizer: its state follows them
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
