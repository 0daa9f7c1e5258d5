"""Zero-shot: the model evaluated as loaded, with no update step (paper Table 2's first row).

The schema fixes ``max_steps: 0``; the shared loop then runs set-up and evaluation only, so the record has the
same shape as every other method's (training time ≈ 0, no forwards or backwards counted).
"""
from __future__ import annotations

from typing import Any, Optional

from torch import nn

from hizfo.registry import ZeroShotConfig, build_config
from hizfo.core.methods import Batch, MethodSummary, StepResult, TrainContext, simple_summary


class ZeroShot:
    """Trains nothing; evaluation generates with the model as loaded."""

    config_class = ZeroShotConfig

    def __init__(self, **cfg: Any) -> None:
        self.cfg = build_config(self.config_class, cfg)        # checks the values (the schema's __post_init__)
        self.model: Optional[nn.Module] = None

    def setup(self, ctx: TrainContext) -> None:
        self.model = ctx.loaded.model

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def train_step(self, batch: Batch) -> StepResult:
        raise RuntimeError("zero_shot has no update step (the loop runs none when method.max_steps is 0)")

    def eval_model(self) -> nn.Module:
        return self.model

    def summary(self) -> MethodSummary:
        return simple_summary(self.model, [])

    def current_lr(self) -> float:
        return 0.0

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
