"""Stop a run whose training loss diverges (``divergence_factor``, ``divergence_patience`` in conf/config.yaml)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from hizfo.errors import ConfigError, TrainingDiverged


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

    def replay(self, losses: list[float]) -> None:
        """Take up a resumed run's watch where it stood: its reference loss and its count of steps above, from the
        losses of the steps already taken (each of which passed the check)."""
        for step, loss in enumerate(losses):            # numbered as the loop numbers them (from 0)
            self.check(step, loss)


def divergence_watch(factor: float, patience: int) -> DivergenceWatch:
    """A checked ``DivergenceWatch`` from the run's ``divergence_factor`` / ``divergence_patience``."""
    if not (factor >= 0 and math.isfinite(factor)):
        raise ConfigError(f"divergence_factor: must be a finite number >= 0 (0 turns the check off), got {factor}")
    if patience < 1:
        raise ConfigError(f"divergence_patience: must be >= 1, got {patience}")
    return DivergenceWatch(factor=factor, patience=patience)
