"""Full FT: every tensor trained with AdamW (lr 2e-5, linear decay, no warm-up; docs/design.md, "Baselines")."""
from __future__ import annotations

from typing import Any

from torch import nn

from hizfo.core.distributed import data_parallel_loss, shard
from hizfo.registry import FullFTConfig, build_config
from hizfo.core.methods import (Batch, FirstOrderTrainer, MethodSummary, StepResult, TrainContext, causal_lm_loss,
                                set_trainable, simple_summary, unique_named_parameters)


class FullFT:
    """First-order training of the tensors ``trainable_names`` picks (all of them here)."""

    def __init__(self, **cfg: Any) -> None:
        self.cfg = build_config(self.config_class, cfg)        # checks the values (the schema's __post_init__)
        self.trainer: FirstOrderTrainer | None = None
        self.model: nn.Module | None = None

    config_class = FullFTConfig
    data_parallel = True        # FSDP2: each rank its slice of the global batch, its shard of every tensor

    def trainable_names(self, model: nn.Module) -> set[str]:
        return {name for name, _ in unique_named_parameters(model)}

    def setup(self, ctx: TrainContext) -> None:
        self.model = ctx.loaded.model
        names = self.trainable_names(self.model)
        set_trainable(self.model, names)
        shard(self.model)                   # several processes: FSDP2 per decoder block (one process: unchanged)
        self.trainer = FirstOrderTrainer(self.model, names, self.cfg.lr, self.cfg.weight_decay, self.cfg.schedule,
                                         ctx.total_steps, self.cfg.grad_clip)

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def train_step(self, batch: Batch) -> StepResult:
        loss, value = data_parallel_loss(causal_lm_loss(self.model, batch), batch)   # global batch's loss
        loss.backward()
        self.trainer.step()
        return StepResult(loss=value, n_forward=1, n_backward=1)

    def eval_model(self) -> nn.Module:
        return self.model

    def summary(self) -> MethodSummary:
        return simple_summary(self.model, [p for _, p in unique_named_parameters(self.model) if p.requires_grad])

    def current_lr(self) -> float:
        return self.trainer.lr()

    def state_dict(self) -> dict[str, Any]:
        return self.trainer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainer.load_state_dict(state)
