"""GreenTrainer GT-ρ (Huang et al., ICLR 2024): FO on the selected tensors, the rest frozen, re-selected
every ``interval`` epochs (epochs 0, 2, 4 of 5; docs/design.md, "Selection"). Shares Hi-ZFO's stage one.

Several processes (docs/design.md, "Many processes"): FSDP2 shards every tensor and the selected ones' AdamW
state; each rank trains on its slice of the global batch. A selection profiles the whole global batch on the
whole weights: every rank gathers them into a plain copy of the model (``whole_copy``, outside FSDP, dropped
after), so it computes what one process would; with ``profile_shards`` it profiles the shards instead (each rank its
rows, the importance summed over the ranks: memory 1/N, one process's selection up to summation order). Rank 0's
selection is then taken by all (dropout's RNG or a GPU's atomics may differ per rank)."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Optional

from torch import nn

from hizfo.core import distributed
from hizfo.core.distributed import data_parallel_loss, shard
from hizfo.registry import GreenTrainerConfig, build_config
from hizfo.core.methods import (Batch, FirstOrderTrainer, MethodSummary, StepResult, TrainContext, causal_lm_loss,
                                check_common, set_trainable, simple_summary, unique_named_parameters)
from hizfo.core.partition import Partition, partition_model


class GreenTrainer:
    """One AdamW over every candidate tensor; only the selected ones get gradients, so only they get state."""

    data_parallel = True    # FSDP2 shards; selections profile the whole global batch on the gathered weights

    def __init__(self, **cfg: Any) -> None:
        self.cfg = build_config(GreenTrainerConfig, cfg)
        check_common(self.cfg)            # the values themselves: GreenTrainerConfig.__post_init__
        self.partition: Optional[Partition] = None
        self.selections: list[dict[str, Any]] = []

    def setup(self, ctx: TrainContext) -> None:
        self.model: nn.Module = ctx.loaded.model
        self.candidates = {name for name, _ in unique_named_parameters(self.model)}
        set_trainable(self.model, self.candidates)
        # several processes: the model's shape kept (meta, no memory) for the whole copies selections profile
        self.shape = distributed.skeleton(self.model) if distributed.current().size > 1 else None
        shard(self.model)                   # several processes: FSDP2 per decoder block (one process: unchanged)
        self.trainer = FirstOrderTrainer(self.model, self.candidates, self.cfg.lr, self.cfg.weight_decay,
                                         self.cfg.schedule, ctx.total_steps, self.cfg.grad_clip)
        self.profile_batches = ctx.profile_batches()      # whole global batches (one process: the train stream)
        self.on_shards = distributed.profiles_on_shards(ctx.profile_shards, distributed.current().size, "greentrainer",
                                                        False)
        self.profiling_seconds = self.selection_seconds = 0.0

    def _select(self, epoch: int) -> None:
        set_trainable(self.model, self.candidates)
        # several processes: profile a whole copy (the sharded weights gathered), every rank alike; with
        # profile_shards, the shards themselves (each rank its rows, the importance summed over the ranks)
        profiled = self.model if self.shape is None or self.on_shards else distributed.whole_copy(self.shape, self.model)
        part = partition_model(profiled, next(self.profile_batches), self.cfg.rho, self.cfg.lr, self.cfg.weight_decay,
                               zo_scope="all", buckets=self.cfg.buckets, shape=self.shape if self.on_shards else None)
        del profiled
        part = distributed.from_main(part)                         # one selection on every rank: rank 0's
        part.frozen, part.zo = part.zo, []                         # GreenTrainer freezes what it leaves out
        set_trainable(self.model, set(part.fo))
        self.partition = part
        self.profiling_seconds += part.profiling_seconds
        self.selection_seconds += part.selection_seconds
        self.selections.append({"epoch": epoch, "fo_tensors": len(part.fo),
                                "backward_flops_share": part.backward_flops_share})

    def on_epoch_start(self, epoch: int) -> None:
        if epoch % self.cfg.interval == 0:
            self._select(epoch)

    def train_step(self, batch: Batch) -> StepResult:
        loss, value = data_parallel_loss(causal_lm_loss(self.model, batch), batch)   # global batch's loss
        loss.backward()
        self.trainer.step()
        return StepResult(loss=value, n_forward=1, n_backward=1)

    def eval_model(self) -> nn.Module:
        return self.model

    def summary(self) -> MethodSummary:
        if self.partition is None:          # evaluation only (max_steps 0): no epoch started, nothing selected
            summary = simple_summary(self.model, [])
            summary.details = {"selections": []}
            return summary
        block = self.partition.summary()
        n = len(self.selections)                          # each selection profiled once: 2 forwards, 2 backwards
        return MethodSummary(trainable_params=block["fo_params"], total_params=block["fo_params"] + block["frozen_params"],
                             partition=block, profiling_seconds=self.profiling_seconds,
                             selection_seconds=self.selection_seconds, profilings=n, setup_forwards=2 * n,
                             setup_backwards=2 * n, details={"selections": self.selections})

    def current_lr(self) -> float:
        return self.trainer.lr()

    def state_dict(self) -> dict[str, Any]:
        return {"trainer": self.trainer.state_dict(), "partition": asdict(self.partition) if self.partition else None,
                "selections": self.selections, "profiling_seconds": self.profiling_seconds,
                "selection_seconds": self.selection_seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainer.load_state_dict(state["trainer"])
        self.partition = Partition(**state["partition"]) if state["partition"] else None
        self.selections = state["selections"]
        self.profiling_seconds, self.selection_seconds = state["profiling_seconds"], state["selection_seconds"]
        if self.partition is not None:
            set_trainable(self.model, set(self.partition.fo))
        for _ in self.selections:          # the profiling stream resumes where it was, so re-selection replays
            next(self.profile_batches)
