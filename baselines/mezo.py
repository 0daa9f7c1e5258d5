"""MeZO (Malladi et al., NeurIPS 2023): two-sided SPSA with ZO-SGD on every trainable tensor, in place.

One step (MeZO Algorithm 1, with the restore fused into the update; docs/design.md, "Baselines"):

    s  = draw_seed(run generator)                      recorded in the run's record, so the run replays
    θ ← θ + ε·z(s)          ; L+ = L(θ + εz)           pass 1 (noise draw 1)
    θ ← θ − 2ε·z(s)         ; L− = L(θ − εz)           pass 2 (noise draw 2)
    g = (L+ − L−) / (2ε)                               projected gradient (a scalar)
    θ ← θ + (ε − η·g)·z(s)                              pass 3 (noise draw 3): restore and ZO-SGD step at once
    θ_d ← (1 − η·λ)·θ_d     on the decayed group only   decoupled weight decay, kept off biases and norms

MeZO's reference code restores (θ += εz) and then updates θ −= η(g·z + λ·θ), drawing z four times. Here a
step draws z three times, every pass is in place through ``hizfo.core.zo.ZOParams`` (no full-size temporary; with
bf16 weights the ±εz never touch θ and only the update is written, stochastically rounded).
Decay is applied after the fused pass, so θ1 = (1 − ηλ)(θ0 − ηgz) = θ0 − η(gz + λθ0) + η²λ·g·z: MeZO's update
up to the O(η²) term η²λgz (λ defaults to 0, where the two agree exactly up to rounding).

Dropout follows the run's one setting (``train_dropout``). Off (the default) is MeZO's own protocol: its
``zo_forward`` runs the model in eval mode (princeton-nlp/MeZO, large_models/trainer.py, ``zo_forward``). On, both
forwards run in train mode and replay the same dropout masks, so L+ − L− still measures the perturbation only.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from hizfo.registry import MeZOConfig, build_config
from hizfo.errors import ConfigError
from hizfo.core.methods import (Batch, MethodSummary, StepResult, TrainContext, causal_lm_loss, check_common, no_decay,
                                replay_rng_if_training, schedule_factor, simple_summary, unique_named_parameters)
from hizfo.core.distributed import data_parallel_losses, shard
from hizfo.core.precision import is_low_precision
from hizfo.core.zo import ZOParams, draw_seed


class MeZO:
    """Memory-efficient ZO-SGD: two forwards per step, no backward, no optimizer state."""

    config_class = MeZOConfig
    data_parallel = True     # ranks share the step seed and the all-reduced losses: the same update everywhere

    def __init__(self, **cfg: Any) -> None:
        self.cfg = build_config(self.config_class, cfg)
        check_common(self.cfg)
        self.model: Optional[nn.Module] = None
        self.params: list[torch.Tensor] = []        # Θ in a fixed order: z(s) regenerates tensor by tensor
        self.decayed: list[torch.Tensor] = []       # the subset that gets weight decay (not biases / norms)
        self.zo_seeds: Optional[torch.Generator] = None
        self.total_steps = 0
        self.step_index = 0

    def setup(self, ctx: TrainContext) -> None:
        self.model = ctx.loaded.model
        self.device = ctx.device
        # several processes: FSDP2 shards Θ and every rank perturbs its shard with the whole tensors' noise
        # (hizfo/core/zo.py); bf16 weights (ZOParams' virtual mode) stay whole on every rank
        whole = [p for p in self.model.parameters() if is_low_precision(p)]
        shard(self.model, replicate=list(self.model.parameters()) if whole else ())
        named = [(n, p) for n, p in unique_named_parameters(self.model) if p.requires_grad]
        if not named:
            raise ConfigError("method: MeZO found no trainable tensors")
        self.params = [p for _, p in named]
        self.decayed = [p for n, p in named if not no_decay(n, p)]
        self.zo = ZOParams(self.params, self.model)       # bf16 weights: exact, never written by ±εz
        self.zo_seeds = ctx.zo_seeds
        self.total_steps = ctx.total_steps

    def on_epoch_start(self, epoch: int) -> None:
        pass

    @torch.no_grad()        # not inference_mode: FSDP2's all-gather buffers made in it could not be reused after
    def _loss(self, batch: Batch) -> float:
        return float(causal_lm_loss(self.model, batch))

    def train_step(self, batch: Batch) -> StepResult:
        eps, lr = self.cfg.eps, self.current_lr()
        seed = draw_seed(self.zo_seeds)
        same_masks = replay_rng_if_training(self.model, self.device)   # train_dropout=true: one mask for both
        self.zo.perturb(seed, eps)                        # θ + εz
        loss_plus = self._loss(batch)
        self.zo.perturb(seed, -2.0 * eps)                 # θ − εz
        same_masks()
        loss_minus = self._loss(batch)
        # several processes: the global batch's losses, one all-reduce (identity in one process)
        loss_plus, loss_minus = data_parallel_losses([loss_plus, loss_minus], batch)
        projected_grad = (loss_plus - loss_minus) / (2.0 * eps)   # MeZO's g: directional derivative along z
        self.zo.restore(-lr * projected_grad)             # restore (+εz) and SGD step (−ηgz), fused
        if self.cfg.weight_decay:
            self.zo.decay(self.decayed, 1.0 - lr * self.cfg.weight_decay, seed)
        self.step_index += 1
        # (L+ + L−)/2 estimates L(θ) to second order in ε: the loss the step started from
        return StepResult(loss=0.5 * (loss_plus + loss_minus), n_forward=2, n_backward=0,
                          logs={"zo_seed": seed, "projected_grad": projected_grad})

    def eval_model(self) -> nn.Module:
        return self.model

    def summary(self) -> MethodSummary:
        return simple_summary(self.model, [], self.params)

    def current_lr(self) -> float:
        return self.cfg.lr * schedule_factor(self.cfg.schedule, self.step_index, self.total_steps)

    def state_dict(self) -> dict[str, Any]:
        return {"step_index": self.step_index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_index = int(state["step_index"])
