"""Bilevel-ZOFO (Shirkavand et al., NeurIPS 2025): FO-trained PEFT adapters below, a ZO-trained backbone above.

Two peft LoRA adapters share one backbone θ: a lower one p_L and an upper one p_U (docs/design.md, "Baselines").
The loop follows the reference trainer at its latest commit, Peiran225/bilevel_ZOFO d2a89bd (2024-11-18),
bilevel_zofo/trainers/bilevel_minimax_trainer2.py, ``BiLevelMinimaxTrainer2._inner_training_loop``, with the
data split of run_bilevel.py and the settings of its sweeps (sweeps/single_task/*/bilevel2_lora.yml):

  data: the dev examples are taken off the end of the training split and leave the training stream
        (run_bilevel.py: ``dev_samples = tasks_train_samples[i][-num_dev:]``, then ``[:-num_dev]``);
        ``Task.train_dev_split`` holds out 10 %, and the record's ``method_summary`` says how many (``n_dev``).
  per batch, lower level (the Trainer's own step):
         p_L ← Adam(clip(∇_{p_L} L(θ, p_L; batch), 1.0))           (1 forward + 1 backward; constant rate)
     clipped at ``method.grad_clip`` (1.0: the HF Trainer's ``max_grad_norm`` default, which the reference
     clips the lower step at and its sweeps do not change).
  upper steps, on a counter that counts lower *and* upper steps (``self.state.global_step``): an upper step
  follows when it reaches a multiple of K = ``lower_steps``, i.e. after batches K, 2K−1, 3K−2, … (at commit
  ca49b6e the condition ``(total_steps + 1) % K`` on batches alone was replaced by this one). The upper level is
  the penalty objective on a dev batch and a second train batch (``dev_iterator``, ``train_iterator_p``):
         F(θ, p_U) = L(θ, p_U; dev) + λ·[L(θ, p_U; train) − L(θ, p_L; train)]     (``compute_upper_loss``)
     - θ gets a one-sided ZO estimate with the shared helper (``compute_zo_grad_theta``):
         θ ← θ + εz(s); F+ = F(θ + εz) (3 forwards, no graph); θ ← θ − εz(s) (restore)
         g = (F+ − F0)/ε; ∇̂_θ = g·z(s), written into θ's gradient through ``ZOParams.noise_into``.
     - p_U gets its exact gradient by backprop of F at θ (``compute_grad_p``). The same three forwards give F0,
       so the reference's separate ZO evaluation at the restored θ (``loss2``: the same value, same network, both
       in eval mode under the default ``train_dropout=false``) is not repeated. The reference spends 8 forwards
       and 1 backward per upper step (``compute_grad_p``: 2 forwards, one backward of their sum;
       ``compute_zo_grad_theta``: 3 + 3 forwards); this code spends 6 forwards and 2 backwards (the sum's
       backward taken term by term, so two graphs are never alive at once: the same backward work).
     - One upper Adam steps θ and p_U together (``bilevel_upper_step``; the sweeps pass ``--upper_optimizer=adam``,
       which is AdamW with ``method.weight_decay`` 0), at a constant rate (no scheduler there; ``method.schedule``
       can change that).
  Per upper step: 1 + 6 forwards and 1 + 2 backwards with its batch's lower step.

Deviations from the reference at d2a89bd, each kept for a reason:
  - Dropout modes: the reference runs its ZO forwards in eval mode and its two backprop passes (the lower step,
    ``compute_grad_p``) in train mode. Here every forward follows the run's one ``train_dropout`` setting
    (docs/design.md, "Dropout"), so all methods train under the same regularisation: under the default (false)
    the ZO forwards are the reference's and the backprop passes run without dropout; under ``true`` every pass
    runs with dropout, and F+ and F0 replay the same masks so F+ − F0 measures the perturbation only.
  - precision=bf16: the reference steps bf16 θ in place (``load_bfloat16``), which rounds most of a 2e-5 Adam
    step away. Here the upper Adam steps fp32 masters of θ and p_U (``hizfo.core.precision.MasterWeights``), θ's ZO
    gradient is written straight into its masters' fp32 gradients, and the model's bf16 θ is published from the
    masters with stochastic rounding (E[θ_bf16] = θ_master), as the other methods keep their bf16 updates.
  - The dev split is the last 10 % of the training split in its stored order; the reference shuffles first
    (``random.shuffle``) and its sweeps hold out a third (``--num_dev``).
  - LoRA: peft's, rank 8 and α 16 (the reference's own LoRA with the sweeps' ``--lora_r=8 --lora_alpha=16``).

Several processes (docs/design.md, "Many processes"): FSDP2 shards p_L, p_U and θ, and the upper Adam's moments
with them; like MeZO's Θ, each rank perturbs its shard of θ and writes its shard of θ's ZO gradient with the
whole tensors' noise (bf16 θ stays whole on every rank). Each rank takes its slice of every train and dev batch;
each loss is its batch's global mean (``data_parallel_loss``), so the seed and g agree on every rank, and p_U's
gradient is the global one (FSDP's average of the scaled losses).

Memory: the upper Adam keeps exp_avg and exp_avg_sq for every backbone tensor (2·|θ|) and the ZO gradient
needs a .grad buffer (|θ|) during the upper step, so Bilevel-ZOFO holds about 4·|θ| at its peak against
MeZO's 1·|θ| (under precision=bf16: fp32 masters, moments and gradient, 16 bytes per θ element against the
2-byte weight). That is the method as described (a dense upper Adam over θ), not an artefact of this code; the
.grad buffers are freed after each upper step so the lower steps' activations do not stack on them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from torch import nn

from baselines.lora import lora_config
from hizfo.core.distributed import data_parallel_loss, data_parallel_losses, shard
from hizfo.registry import BilevelZOFOConfig, build_config
from hizfo.core.methods import (Batch, FirstOrderTrainer, MethodSummary, StepResult, TrainContext, causal_lm_loss,
                                check_common, lr_schedule, no_decay, replay_rng_if_training, simple_summary,
                                unique_named_parameters)
from hizfo.core.precision import MasterWeights, is_low_precision
from hizfo.core.zo import ZOParams, draw_seed

LOWER, UPPER = "lower", "upper"     # peft adapter names of p_L and p_U


@dataclass
class UpperTerms:
    """The three losses of the upper objective and λ; ``total`` is F(θ, p_U)."""
    dev_upper: float       # L(θ, p_U; dev)
    train_upper: float     # L(θ, p_U; train)
    train_lower: float     # L(θ, p_L; train)
    lam: float

    @property
    def total(self) -> float:
        return self.dev_upper + self.lam * (self.train_upper - self.train_lower)


class BilevelZOFO:
    """Lower FO adapter, upper FO adapter + ZO backbone, one upper AdamW."""

    config_class = BilevelZOFOConfig
    holds_out_dev = True    # the loop takes the dev examples out of the training stream (Task.train_dev_split)
    data_parallel = True    # adapters and θ sharded by FSDP2, θ perturbed shard by shard, every loss global

    def __init__(self, **cfg: Any) -> None:
        self.cfg = build_config(self.config_class, cfg)
        check_common(self.cfg)            # the values themselves: BilevelZOFOConfig.__post_init__
        self.peft_model: Optional[nn.Module] = None
        self.backbone: list[torch.Tensor] = []      # θ in a fixed order: z(s) regenerates tensor by tensor
        self.upper_adapter: list[torch.Tensor] = []
        self.lower: Optional[FirstOrderTrainer] = None
        self.upper: Optional[torch.optim.Optimizer] = None
        self.upper_schedule: Optional[torch.optim.lr_scheduler.LRScheduler] = None
        self.zo_seeds: Optional[torch.Generator] = None
        self.upper_train_batches: Optional[Iterator[Batch]] = None
        self.dev_batches: Optional[Iterator[Batch]] = None
        self.batches_drawn = {"train": 0, "dev": 0}   # for exact resume of the upper level's two streams
        self.batches_seen = 0                          # lower steps taken (one per batch)
        self.theta_masters: Optional[MasterWeights] = None    # precision=bf16: fp32 θ, stepped by the upper Adam
        self.upper_masters: Optional[MasterWeights] = None    # precision=bf16: fp32 p_U
        self.split = {"n_train": 0, "n_dev": 0}

    # -- set-up ------------------------------------------------------------------------------------------
    def setup(self, ctx: TrainContext) -> None:
        from peft import get_peft_model
        config = lora_config(self.cfg, ctx.loaded)        # checks the target modules exist
        self.peft_model = get_peft_model(ctx.loaded.model, config, adapter_name=UPPER)
        self.peft_model.add_adapter(LOWER, config)
        named = unique_named_parameters(self.peft_model)
        is_adapter = {n: any(f".{a}." in n for a in (LOWER, UPPER)) and "lora_" in n for n, _ in named}
        for n, p in named:               # θ moves by ZO only: autograd never needs it
            if not is_adapter[n]:
                p.requires_grad_(False)
        # several processes: FSDP2 shards p_L, p_U and θ (their Adam moments follow); each rank perturbs its shard of
        # θ with the whole tensors' noise (hizfo/core/zo.py). bf16 θ (ZOParams' virtual mode) stays whole
        whole = [p for n, p in named if not is_adapter[n] and is_low_precision(p)]
        shard(self.peft_model, replicate=[p for n, p in named if not is_adapter[n]] if whole else ())
        named = unique_named_parameters(self.peft_model)     # as FSDP2 holds them (one process: the same)
        backbone = [(n, p) for n, p in named if not is_adapter[n]]
        self.backbone = [p for _, p in backbone]
        self.zo = ZOParams(self.backbone, self.peft_model)   # bf16 weights: θ ± εz never written, exact
        upper_named = [(n, p) for n, p in named if is_adapter[n] and f".{UPPER}." in n]
        self.upper_adapter = [p for _, p in upper_named]
        lower_names = {n for n, _ in named if is_adapter[n] and f".{LOWER}." in n}
        # lower level: plain Adam steps on p_L at a constant rate, one per training batch
        self.lower = FirstOrderTrainer(self.peft_model, lower_names, self.cfg.lower_lr, 0.0, "constant",
                                       ctx.total_steps, grad_clip=self.cfg.grad_clip)
        # upper level: one AdamW over θ (ZO gradient) and p_U (backprop gradient); decay off biases and norms
        backbone_lr = self.cfg.upper_lr if self.cfg.backbone_lr is None else self.cfg.backbone_lr
        wd = self.cfg.weight_decay
        # bf16 weights (precision=bf16): the upper Adam steps fp32 masters, so its steps are not rounded away
        if any(is_low_precision(p) for p in self.backbone):
            self.theta_masters = MasterWeights(self.backbone)
            backbone = [(n, m) for (n, _), m in zip(backbone, self.theta_masters.masters)]
        if any(is_low_precision(p) for p in self.upper_adapter):
            self.upper_masters = MasterWeights(self.upper_adapter)
            upper_named = [(n, m) for (n, _), m in zip(upper_named, self.upper_masters.masters)]
        groups = [
            {"params": [p for n, p in upper_named if not no_decay(n, p)], "lr": self.cfg.upper_lr, "weight_decay": wd},
            {"params": [p for n, p in upper_named if no_decay(n, p)], "lr": self.cfg.upper_lr, "weight_decay": 0.0},
            {"params": [p for n, p in backbone if not no_decay(n, p)], "lr": backbone_lr, "weight_decay": wd},
            {"params": [p for n, p in backbone if no_decay(n, p)], "lr": backbone_lr, "weight_decay": 0.0},
        ]
        self.upper = torch.optim.AdamW([g for g in groups if g["params"]], lr=self.cfg.upper_lr)
        self.upper_schedule = lr_schedule(self.upper, self.cfg.schedule, max(1, ctx.total_steps // self.cfg.lower_steps))
        self.split = {"n_train": ctx.n_train, "n_dev": ctx.n_dev}
        self.peft_model.set_adapter(UPPER)
        self.zo_seeds = ctx.zo_seeds
        self.device = ctx.device
        self.upper_train_batches = ctx.train_batches()
        self.dev_batches = ctx.dev_batches()

    def on_epoch_start(self, epoch: int) -> None:
        pass

    # -- the objective -----------------------------------------------------------------------------------
    def upper_objective(self, dev: Batch, train: Batch, backprop_upper: bool = False) -> UpperTerms:
        """F(θ, p_U) term by term (3 forwards); with ``backprop_upper`` the p_U terms also backprop (2 backwards)."""
        model, lam = self.peft_model, self.cfg.lam
        model.set_adapter(UPPER)
        with torch.set_grad_enabled(backprop_upper):           # each loss the global batch's (its own batch)
            dev_upper, dev_value = data_parallel_loss(causal_lm_loss(model, dev), dev)
            if backprop_upper:
                dev_upper.backward()             # frees this graph before the next forward
            train_upper, train_value = data_parallel_loss(causal_lm_loss(model, train), train)
            if backprop_upper:
                (lam * train_upper).backward()   # ∂F/∂p_U = ∇L(θ,p_U;dev) + λ∇L(θ,p_U;train)
        model.set_adapter(LOWER)
        with torch.no_grad():
            train_lower, = data_parallel_losses([float(causal_lm_loss(model, train))], train)
        model.set_adapter(UPPER)
        return UpperTerms(dev_value, train_value, train_lower, lam)

    @torch.no_grad()
    def materialise_backbone_grad_(self, seed: int, projected_grad: float) -> list[torch.Tensor]:
        """θ's gradient ← g·z(s), tensor by tensor, through the shared helper on zeroed buffers: θ.grad, or the
        fp32 masters' .grad under precision=bf16. Returns the buffers."""
        if self.theta_masters is not None:
            grads = self.theta_masters.fresh_grads()
        else:
            grads = []
            for p in self.backbone:
                p.grad = torch.zeros_like(p)
                grads.append(p.grad)
        self.zo.noise_into(grads, seed, projected_grad)
        return grads

    def upper_step_due(self) -> bool:
        """Whether an upper step follows the batch just taken: the reference's ``global_step`` counts lower and
        upper steps, and an upper step follows when it reaches a multiple of K (after batches K, 2K−1, 3K−2, …)."""
        return (self.batches_seen + self.batches_drawn["dev"]) % self.cfg.lower_steps == 0

    # -- one step: a lower step, and when due (after batches K, 2K−1, 3K−2, …) an upper step ------------------
    def train_step(self, batch: Batch) -> StepResult:
        model = self.peft_model
        model.set_adapter(LOWER)
        loss, lower_loss = data_parallel_loss(causal_lm_loss(model, batch), batch)   # L(θ, p_L; batch), global
        loss.backward()
        self.lower.step()
        del loss
        model.set_adapter(UPPER)
        self.batches_seen += 1
        if not self.upper_step_due():
            return StepResult(loss=lower_loss, n_forward=1, n_backward=1)
        logs = self.upper_step()
        return StepResult(loss=lower_loss, n_forward=1 + 6, n_backward=1 + 2, logs=logs)

    def upper_step(self) -> dict[str, float]:
        """ZO estimate for θ, backprop for p_U, one AdamW step on both (6 forwards, 2 backwards)."""
        eps = self.cfg.eps
        dev, train = self._next("dev"), self._next("train")
        same_masks = replay_rng_if_training(self.peft_model, self.device)
        # F(θ + εz): 3 forwards, no graph
        seed = draw_seed(self.zo_seeds)
        self.zo.perturb(seed, eps)
        perturbed = self.upper_objective(dev, train, backprop_upper=False)
        self.zo.restore()                                                 # restore θ
        # F(θ) and p_U's gradient: 3 forwards, 2 backwards, the same dropout masks as F+
        same_masks()
        clean = self.upper_objective(dev, train, backprop_upper=True)
        projected_grad = (perturbed.total - clean.total) / eps            # one-sided: g = ΔF / ε
        if self.upper_masters is not None:
            self.upper_masters.take_grads()                               # p_U's bf16 gradient → fp32 masters
        self.materialise_backbone_grad_(seed, projected_grad)             # ∇̂_θ F = g·z(s)
        self.upper.step()
        self.upper_schedule.step()
        self.upper.zero_grad(set_to_none=True)                            # frees the |θ| .grad buffers
        if self.upper_masters is not None:
            self.upper_masters.publish()
        if self.theta_masters is not None:                                # bf16 θ ← SR(master), seeded by the step
            self.theta_masters.publish(self._rounding_generator(seed))
        return {"zo_seed": seed, "projected_grad": projected_grad, "upper_objective": clean.total,
                "dev_loss": clean.dev_upper, "upper_train_loss": clean.train_upper,
                "lower_train_loss": clean.train_lower}

    def _rounding_generator(self, seed: int) -> torch.Generator:
        device = self.backbone[0].device if self.backbone else torch.device("cpu")
        return torch.Generator(device=device).manual_seed(seed ^ 0x5B1E)

    def _next(self, stream: str) -> Batch:
        self.batches_drawn[stream] += 1
        return next(self.upper_train_batches if stream == "train" else self.dev_batches)

    # -- the Method protocol's rest ----------------------------------------------------------------------
    def eval_model(self) -> nn.Module:
        self.peft_model.set_adapter(UPPER)        # evaluate (θ, p_U)
        return self.peft_model

    def summary(self) -> MethodSummary:
        backbone = {id(p) for p in self.backbone}
        adapters = [p for _, p in unique_named_parameters(self.peft_model) if id(p) not in backbone]
        summary = simple_summary(self.peft_model, adapters, self.backbone)
        summary.details.update(self.split)                 # training examples, and the dev examples held out
        return summary

    def current_lr(self) -> float:
        return float(self.upper.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        from peft import get_peft_model_state_dict
        adapters = {name: {k: v.detach().clone()
                           for k, v in get_peft_model_state_dict(self.peft_model, adapter_name=name).items()}
                    for name in (LOWER, UPPER)}
        masters = {name: m.state_dict() for name, m in (("theta", self.theta_masters), ("upper", self.upper_masters))
                   if m is not None}
        return {"upper": self.upper.state_dict(), "upper_schedule": self.upper_schedule.state_dict(),
                "lower": self.lower.state_dict(), "adapters": adapters, "batches_drawn": dict(self.batches_drawn),
                "batches_seen": self.batches_seen, "masters": masters}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from peft import set_peft_model_state_dict
        for name, m in (("theta", self.theta_masters), ("upper", self.upper_masters)):
            if m is not None and name in state.get("masters", {}):
                m.load_state_dict(state["masters"][name])     # before the optimizer: its state follows them
        self.upper.load_state_dict(state["upper"])
        self.upper_schedule.load_state_dict(state["upper_schedule"])
        self.lower.load_state_dict(state["lower"])
        for name, weights in state["adapters"].items():
            set_peft_model_state_dict(self.peft_model, weights, adapter_name=name)
        self.batches_seen = int(state["batches_seen"])
        for stream, count in state["batches_drawn"].items():   # replay the extra streams to where they were
            for _ in range(count - self.batches_drawn[stream]):
                self._next(stream)
