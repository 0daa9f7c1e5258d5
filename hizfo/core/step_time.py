"""A rough training time per epoch: the cost model's MACs per step (hizfo/core/costs.py) over a stated throughput.

Per step, with F = the forward's MACs (Σ t_fp) and B = the backward down to the deepest trainable tensor
(Σ_{j≤d} t_dy + Σ_{Θ_FO} t_dw; the peft methods' adapters sit in every block, so their backward reaches block 0 and
their t_dw is negligible):

  Full FT, FT-Top2, LoRA, Prefix, GreenTrainer   F + B
  MeZO                                           2F                  (two perturbed forwards)
  Hi-ZFO                                         2F + B              (L_FO's forward and backward, L_ZO's forward)
  Bilevel-ZOFO                                   F + B + (6F + 2B)/K (an upper step every K = lower_steps batches)

FLOPs = 2 × MACs; seconds = FLOPs / (throughput). Rough: the attention products, the head, elementwise ops,
data loading, evaluation (beam search) and Hi-ZFO's / GreenTrainer's profiling are counted at best partly, and a
real device reaches its rated throughput only on large matrix products.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

# train split sizes of the hub tasks (allenai/scitldr Abstract, knkarthick/dialogsum, web_questions)
TRAIN_EXAMPLES = {"scitldr": 1992, "dialogsum": 12460, "webquestions": 3778}
PEFT = ("lora", "prefix", "bilevel_zofo")


@dataclass(frozen=True)
class EpochEstimate:
    macs_per_step: float
    steps: int
    seconds: float
    tflops: float
    examples: int

    def line(self) -> str:
        return (f"rough time per epoch: {self.seconds / 3600:.2f} h ({self.steps} steps x "
                f"{2 * self.macs_per_step / 1e12:.1f} TFLOP at an assumed {self.tflops:g} TFLOP/s sustained per "
                f"device, {self.examples} training examples; matrix products only, no evaluation or profiling)")


def step_macs(costs: list[Any], method: str, fo: set[str], cfg: dict[str, Any]) -> float:
    """MACs of one training step of ``method`` over the model's per-tensor ``costs`` (index 0 nearest the output)."""
    forward = float(sum(c.t_fp for c in costs))
    if method in PEFT:
        backward = float(sum(c.t_dy for c in costs))
    else:
        deepest = max((i for i, c in enumerate(costs) if c.name in fo), default=-1)
        backward = float(sum(c.t_dy for c in costs[:deepest + 1]) + sum(c.t_dw for c in costs if c.name in fo))
    if method == "mezo":
        return 2 * forward
    if method == "hizfo":
        return 2 * forward + backward
    if method == "bilevel_zofo":
        return forward + backward + (6 * forward + 2 * backward) / max(1, int(cfg.get("lower_steps", 10)))
    return forward + backward


def epoch_estimate(costs: list[Any], method: str, fo: set[str], cfg: dict[str, Any], task: str, batch: int,
                   world_size: int, tflops: float, examples: Optional[int] = None) -> Optional[EpochEstimate]:
    """The rough per-epoch time on ``world_size`` devices of ``tflops`` each; None when the train size is unknown."""
    n = examples if examples is not None else TRAIN_EXAMPLES.get(task)
    if not n:
        return None
    macs = step_macs(costs, method, fo, cfg)
    steps = math.ceil(n / batch)
    seconds = steps * 2 * macs / (tflops * 1e12 * world_size)
    return EpochEstimate(macs_per_step=macs, steps=steps, seconds=seconds, tflops=tflops, examples=n)
