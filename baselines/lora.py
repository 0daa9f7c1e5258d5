"""LoRA (Hu et al., 2022) through peft: AdamW on the low-rank adapters only; the backbone stays frozen.

Defaults follow GreenTrainer's LoRA baseline, which the paper's baselines follow (paper A.2; docs/design.md, "Baselines"):
r = 8, α = 32, dropout 0.1, AdamW 2e-5 with linear decay, 5 epochs. Target modules come from the model's config
(``model.lora_target_modules``: q_proj,v_proj for OPT and Qwen, query_key_value for BLOOM) unless
``method.target_modules`` overrides them.

``PeftAdapterMethod`` is the shared shape of every peft-adapter baseline (LoRA here, Prefix-Tuning in
baselines/prefix.py): wrap the model once with ``get_peft_model``, train the adapter tensors with the shared
``FirstOrderTrainer``, and evaluate by generating through the peft model.
"""
from __future__ import annotations

from typing import Any, Optional

from torch import nn

from hizfo.core.distributed import current, data_parallel_loss, shard
from hizfo.config import MethodConfig
from hizfo.registry import LoRAConfig, build_config, check_lora_values  # noqa: F401  (bilevel_zofo's import)
from hizfo.errors import ConfigError
from hizfo.core.methods import (Batch, FirstOrderTrainer, MethodSummary, StepResult, TrainContext, causal_lm_loss,
                                simple_summary, unique_named_parameters)
from hizfo.core.models import LoadedModel


def peft_module_matches(module_name: str, target: str) -> bool:
    """peft's rule for a plain-string target: the full module name, or its dotted suffix."""
    return module_name == target or module_name.endswith("." + target)


def check_target_modules(model: nn.Module, targets: list[str], key: str) -> None:
    """Every target names at least one module of ``model`` (peft would only say that none matched)."""
    if not targets:
        raise ConfigError(f"{key}: no LoRA target modules given")
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(peft_module_matches(name, t) for name in names)]
    if missing:
        leaves = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ConfigError(f"{key}: {', '.join(missing)} matches no module of {type(model).__name__} "
                          f"(its linear layers: {', '.join(leaves)})")


class PeftAdapterMethod:
    """A peft adapter trained with AdamW; subclasses say which peft config to build (their schemas check values)."""

    config_class: type = MethodConfig
    data_parallel = True        # FSDP2: each rank its slice of the global batch, its shard of every tensor
    # peft's state-dict helper works on FSDP2 shards: LoRA's reads the adapter weights; Prefix-Tuning's runs the
    # prompt encoder, which fails on a shard
    adapter_state_on_shards = True

    def __init__(self, **cfg: Any) -> None:
        self.cfg = build_config(self.config_class, cfg)        # checks the values (the schema's __post_init__)
        self.peft_model: Optional[nn.Module] = None
        self.trainer: Optional[FirstOrderTrainer] = None

    def peft_config(self, loaded: LoadedModel) -> Any:
        raise NotImplementedError

    def setup(self, ctx: TrainContext) -> None:
        from peft import get_peft_model
        config = self.peft_config(ctx.loaded)
        try:
            # injects the adapters into ctx.loaded.model in place and freezes every other tensor
            self.peft_model = get_peft_model(ctx.loaded.model, config)
        except ValueError as exc:
            raise ConfigError(f"method: peft refused the adapter config: {exc}".splitlines()[0]) from exc
        names = {n for n, p in unique_named_parameters(self.peft_model) if p.requires_grad}
        shard(self.peft_model)              # several processes: FSDP2 per decoder block (one process: unchanged)
        self.trainer = FirstOrderTrainer(self.peft_model, names, self.cfg.lr, self.cfg.weight_decay,
                                         self.cfg.schedule, ctx.total_steps, self.cfg.grad_clip)

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def train_step(self, batch: Batch) -> StepResult:
        loss, value = data_parallel_loss(causal_lm_loss(self.peft_model, batch), batch)   # global batch's loss
        loss.backward()                      # reaches only the adapters; the frozen backbone gets no .grad
        self.trainer.step()
        return StepResult(loss=value, n_forward=1, n_backward=1)

    def eval_model(self) -> nn.Module:
        return self.peft_model

    def summary(self) -> MethodSummary:
        trainable, _ = self.peft_model.get_nb_trainable_parameters()        # peft's own count
        return simple_summary(self.peft_model, [p for _, p in unique_named_parameters(self.peft_model)
                                                if p.requires_grad], trainable_params=trainable)

    def current_lr(self) -> float:
        return self.trainer.lr()

    def state_dict(self) -> dict[str, Any]:
        # the adapter weights also travel with the optimizer state (a prefix encoder lives outside loaded.model);
        # several processes, where peft's helper cannot read them from the shards (adapter_state_on_shards): they
        # are parameters of eval_model(), which the checkpoint's DCP files hold sharded anyway
        from peft import get_peft_model_state_dict
        if current().size > 1 and not self.adapter_state_on_shards:
            return self.trainer.state_dict()
        return {**self.trainer.state_dict(),
                "adapter": {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.peft_model).items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from peft import set_peft_model_state_dict
        self.trainer.load_state_dict(state)
        if "adapter" in state:
            set_peft_model_state_dict(self.peft_model, state["adapter"])


def lora_config(cfg: LoRAConfig, loaded: LoadedModel) -> Any:
    """peft's LoraConfig from the method values and the model's default targets (checked to exist)."""
    from peft import LoraConfig
    if cfg.target_modules is not None:
        targets, key = list(cfg.target_modules), "method.target_modules"
    else:
        targets, key = list(loaded.lora_target_modules), "model.lora_target_modules"
    check_target_modules(loaded.model, targets, key)
    return LoraConfig(task_type="CAUSAL_LM", r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias="none")


class LoRA(PeftAdapterMethod):
    """LoRA adapters on the model's attention projections, trained with AdamW."""

    config_class = LoRAConfig

    def peft_config(self, loaded: LoadedModel) -> Any:
        return lora_config(self.cfg, loaded)
