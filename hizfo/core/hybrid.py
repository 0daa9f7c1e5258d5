"""Hi-ZFO (paper §3, Algorithm 1): FO updates for the selected tensors, seeded in-place ZO for the rest.

One step, in the memory-lean order of docs/design.md "The Hi-ZFO step" (never two autograd graphs alive):
  1. L_FO = L(x; Θ_FO, Θ_ZO) with autograd for Θ_FO only; backward; the graph is freed.   (Alg. 1 line 5)
  2. seed s from the run's generator; Θ_ZO += ε·u(s) in place.                             (line 6)
  3. L_ZO = L(x; Θ_FO, Θ_ZO + εu), the same dropout masks as step 1.                       (line 7)
  4. Θ_ZO −= (ε + η_ZO·c·(L_ZO − L_FO)/ε)·u(s): restore and update in one pass.           (lines 8, 13–14; eqs. 2–3)
  5. AdamW on Θ_FO.                                                                        (line 11; eq. 1)

α has two readings in the paper, both offered as ``alpha_mode`` (docs/design.md "Two readings of α"):
  * ``update`` (default; Appendix D eq. 10, v_t = [α·ĝ_ZO, g_FO]): c = α, Θ_FO's gradient is ∇L_FO alone. α = 0 is
    then first-order training of Θ_FO only, as §5.4 says ("α = 0 reduces Hi-ZFO to a standard FO baseline").
    The effective ZO rate is α·η_ZO: 2e-7 at the paper's α 0.1 and η_ZO 2e-6, a tenth of §4.2's ZO rate.
  * ``loss`` (§3.4's "loss-level coupling", Algorithm 1 line 10, L_total = L_FO + α·L_ZO): c = 1 (the ZO rate is
    η_ZO, 2e-6), and step 3 also backprops α·L_ZO into Θ_FO. Under AdamW this mostly rescales Θ_FO's gradient,
    which Adam cancels, so α can hardly change a run.

``zo_update`` gives the controls their one difference from Hi-ZFO (method configs hizfo_zo_off, hizfo_random_dir):
  * ``estimate``: ĝ = (L_ZO − L_FO)/ε · u(s) (eq. 2), the method;
  * ``random_direction``: the step's projected gradient gets a random sign, so Θ_ZO moves by exactly the norm the
    ZO step would have, along ±u(s) with the sign carrying no information about the loss;
  * ``disabled``: no perturbed stream and no ZO step (η_ZO = 0): Θ_FO alone trains, after the same profiling.
    Under ``alpha_mode=update`` that is one change (it equals α = 0 bit for bit); under ``loss`` it is two, since
    without L_ZO the coupling α·∇L_ZO also leaves Θ_FO's gradient (docs/design.md "Controls").
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from hizfo.registry import HiZFOConfig, build_config
from hizfo.errors import ConfigError
from hizfo.core.distributed import (current, data_parallel_loss, from_main, profiles_on_shards, shard,
                                    skeleton)
from hizfo.core.methods import (Batch, FirstOrderTrainer, MethodSummary, StepResult, TrainContext, causal_lm_loss,
                                check_common, replay_rng_if_training, schedule_factor, set_trainable)
from hizfo.core.partition import Partition, params_of, partition_model
from hizfo.core.precision import is_low_precision
from hizfo.core.zo import ZOParams, chunk_seed, draw_seed


def random_sign(seed: int) -> float:
    """±1 from the step seed (hashed, so independent of the loss): the random-direction control's coin."""
    return 1.0 if chunk_seed(seed, 0x5EED, 0) & 1 else -1.0


class HiZFO:
    """The Hi-ZFO method: partition once before training (the paper's stated limitation), then dual streams."""

    data_parallel = True    # Θ_FO and Θ_ZO sharded by FSDP2 (bf16 Θ_ZO whole), every loss the global batch's

    def __init__(self, **cfg: Any) -> None:
        self.cfg = build_config(HiZFOConfig, cfg)
        check_common(self.cfg)            # the values themselves: HiZFOConfig.__post_init__ (hizfo/registry.py)
        self.zo_lr = self.cfg.zo_lr if self.cfg.zo_lr is not None else self.cfg.lr_ratio * self.cfg.lr
        if self.cfg.zo_update == "disabled":
            self.zo_lr = 0.0                      # the ZO-off control: η_ZO = 0, as its record says
        self.partition: Optional[Partition] = None
        self.step_count = 0
        self.fo_changed_min: Optional[float] = None   # the least share of Θ_FO one step changed (record: summary)

    # -- set-up: Algorithm 1 lines 1–2 ------------------------------------------------------------------
    def setup(self, ctx: TrainContext) -> None:
        self.model: nn.Module = ctx.loaded.model
        self.device = ctx.device
        self.total_steps = ctx.total_steps
        self.zo_seeds = ctx.zo_seeds
        for p in self.model.parameters():
            p.requires_grad_(True)
        profile_batch = next(ctx.profile_batches())       # the whole global batch on every rank
        # several processes: every rank profiles the whole model on the whole batch (one process's selection), or with
        # profile_shards FSDP2 shards it first and each rank profiles its rows on its shards (memory 1/N). bf16 weights
        # keep Θ_ZO whole on every rank, which only the partition names: they profile whole, and shard after
        shape = None
        if profiles_on_shards(ctx.profile_shards, current().size, "hizfo",
                              any(is_low_precision(p) for p in self.model.parameters())):
            shape = skeleton(self.model)                  # the meta tree the cost model traces
            shard(self.model)
        part = partition_model(self.model, profile_batch, self.cfg.rho, self.cfg.lr, self.cfg.weight_decay,
                               self.cfg.zo_scope, self.cfg.buckets, shape=shape)
        # one selection on every rank, rank 0's: ranks whose profiles differ in rounding (a GPU's atomics) would
        # otherwise train different Θ_FO and perturb different Θ_ZO lists, and their collectives would not match
        self.partition = from_main(part)
        self._apply_partition()

    def _apply_partition(self) -> None:
        part = self.partition
        set_trainable(self.model, set(part.fo))                    # autograd only for Θ_FO
        # several processes: FSDP2 shards Θ_FO, Θ_ZO and the frozen rest (already, where profiling ran sharded); every
        # rank perturbs its shard of Θ_ZO with the whole tensors' noise (hizfo/core/zo.py). bf16 Θ_ZO (ZOParams'
        # virtual mode) stays whole on every rank
        zo_whole = any(is_low_precision(p) for p in params_of(self.model, part.zo))
        shard(self.model, replicate=params_of(self.model, part.zo) if zo_whole else ())
        self.fo_trainer = (FirstOrderTrainer(self.model, set(part.fo), self.cfg.lr, self.cfg.weight_decay,
                                             self.cfg.schedule, self.total_steps, self.cfg.grad_clip)
                           if part.fo else None)
        self.zo_params = params_of(self.model, part.zo)            # fixed order: u regenerates exactly
        self.zo = ZOParams(self.zo_params, self.model)             # bf16 weights: exact, never written by ±εu
        self.zo_optimizer = None
        if self.cfg.zo_optimizer == "adamw" and self.zo_params and self.zo.virtual:
            raise ConfigError("method.zo_optimizer: adamw keeps no fp32 state for bf16 weights; use sgd with "
                              "precision=bf16, or precision=bf16-mixed")
        if self.cfg.zo_optimizer == "adamw" and self.zo_params:
            self.zo_optimizer = torch.optim.AdamW(self.zo_params, lr=self.zo_lr, weight_decay=0.0)

    def on_epoch_start(self, epoch: int) -> None:
        pass

    # -- one step ---------------------------------------------------------------------------------------
    def train_step(self, batch: Batch) -> StepResult:
        cfg = self.cfg
        has_fo = self.fo_trainer is not None
        same_masks = replay_rng_if_training(self.model, self.device)
        # 1. clean stream: L_FO, backward for Θ_FO, graph freed
        with torch.set_grad_enabled(has_fo):
            loss_fo, l_fo = data_parallel_loss(causal_lm_loss(self.model, batch), batch)   # the global batch's
            if has_fo:
                loss_fo.backward()
        del loss_fo
        zo_lr = self.zo_lr * schedule_factor(cfg.schedule, self.step_count, self.total_steps)
        loss_reading = cfg.alpha_mode == "loss"
        zo_scale = 1.0 if loss_reading else cfg.alpha                  # c in the module docstring
        backward_zo = has_fo and loss_reading and cfg.alpha > 0
        moves_zo = bool(self.zo_params) and zo_lr * zo_scale != 0
        logs: dict[str, float] = {"zo_lr": zo_lr * zo_scale}
        # the perturbed stream runs only when it can change something
        if cfg.zo_update != "disabled" and (backward_zo or moves_zo):
            # 2. perturb Θ_ZO in place with u(s)
            seed = draw_seed(self.zo_seeds)
            self.zo.perturb(seed, cfg.eps)
            same_masks()                                               # same dropout masks in both streams
            # 3. perturbed stream: L_ZO; in the loss reading α·L_ZO joins L_total for Θ_FO (Alg. 1 line 10)
            with torch.set_grad_enabled(backward_zo):
                loss_zo, l_zo = data_parallel_loss(causal_lm_loss(self.model, batch), batch)
                if backward_zo:
                    (cfg.alpha * loss_zo).backward()
            del loss_zo
            # 4. restore + ZO update in one pass (eqs. 2–3): ĝ = (L_ZO − L_FO)/ε · u, scaled by c
            projected = (l_zo - l_fo) / cfg.eps
            step_grad = zo_scale * projected
            if cfg.zo_update == "random_direction":
                step_grad = random_sign(seed) * abs(step_grad)
            if self.zo_optimizer is None:
                self.zo.restore(-zo_lr * step_grad)                   # restore + ZO-SGD step, one pass
            else:
                self._zo_adamw_step(seed, step_grad, zo_lr)
            logs.update(zo_loss=l_zo, zo_projected_grad=projected, zo_step_grad=step_grad, zo_seed=seed)
            streams = 2
        else:
            streams = 1
        # 5. AdamW on Θ_FO
        if has_fo:
            self.fo_trainer.step()
            # share of the stepped elements the update changed: the fp32 masters under precision=bf16, so this shows
            # an update lost in fp32, not the rounding of the bf16 copies (hizfo.core.precision.MasterWeights.publish)
            moved = self.fo_trainer.changed_fraction
            if moved is not None:
                logs["fo_changed_fraction"] = moved
                self.fo_changed_min = moved if self.fo_changed_min is None else min(self.fo_changed_min, moved)
        self.step_count += 1
        n_backward = int(has_fo) + int(backward_zo and streams == 2)
        return StepResult(loss=l_fo, n_forward=streams, n_backward=n_backward, logs=logs)

    def _zo_adamw_step(self, seed: int, projected: float, zo_lr: float) -> None:
        """Optional ZO-AdamW (§4.2's wording): restore, materialise ĝ per tensor as .grad, AdamW step."""
        self.zo.restore()
        grads = [torch.zeros_like(p) for p in self.zo_params]
        self.zo.noise_into(grads, seed, projected)                 # ĝ = proj · u(s)
        for p, g in zip(self.zo_params, grads):
            p.grad = g
        for group in self.zo_optimizer.param_groups:
            group["lr"] = zo_lr
        self.zo_optimizer.step()
        for p in self.zo_params:
            p.grad = None

    # -- reporting and checkpoints ----------------------------------------------------------------------
    def eval_model(self) -> nn.Module:
        return self.model

    def summary(self) -> MethodSummary:
        part = self.partition
        block = part.summary()
        return MethodSummary(trainable_params=block["fo_params"] + block["zo_params"],
                             total_params=block["fo_params"] + block["zo_params"] + block["frozen_params"],
                             partition=block, profiling_seconds=part.profiling_seconds,
                             selection_seconds=part.selection_seconds, profilings=1, setup_forwards=2,
                             setup_backwards=2,   # profiling: 2 forwards, 2 backwards
                             details={"zo_lr": self.zo_lr, "fo_changed_fraction_min": self.fo_changed_min})

    def current_lr(self) -> float:
        return self.fo_trainer.lr() if self.fo_trainer is not None else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"fo": self.fo_trainer.state_dict() if self.fo_trainer else None,
                "zo": self.zo_optimizer.state_dict() if self.zo_optimizer else None,
                "fo_names": list(self.partition.fo), "zo_names": list(self.partition.zo),
                "step_count": self.step_count, "fo_changed_min": self.fo_changed_min}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["fo_names"] != self.partition.fo or state["zo_names"] != self.partition.zo:
            raise ConfigError("checkpoint: its FO/ZO partition differs from this run's; it cannot be resumed")
        if self.fo_trainer is not None and state["fo"] is not None:
            self.fo_trainer.load_state_dict(state["fo"])
        if self.zo_optimizer is not None and state["zo"] is not None:
            self.zo_optimizer.load_state_dict(state["zo"])
        self.step_count = state["step_count"]
        self.fo_changed_min = state.get("fo_changed_min")          # absent in checkpoints written before it
