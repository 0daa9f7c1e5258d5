"""Every method's config schema, and the one registry table of methods: name -> config class -> implementation.

Torch-free, so analysis reads a method's defaults without importing torch or peft. A config's ``_target_`` names
the class that implements it (imported only when a run builds the method: ``implementation``); Hydra's config
store gets every schema from ``METHODS`` (``register_schemas``), so no method registers by the side
effect of an import. run.py, the tests' compose, analysis (hyperparameter defaults) and benchmarks (the classes
they time) all read this table. Configs are built one way: ``build_config``, and every schema checks its values
when built (``__post_init__``, one line naming the key), so a config built by analysis or a benchmark is checked too.

Each method's docstring and the reference it follows are in its implementation module (hizfo/core/hybrid.py,
baselines/*.py); the yaml in conf/method/ sets only what differs from the schema.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Optional, get_args

from hizfo.config import (TASK_PROTOCOLS, LoggerConfig, MethodConfig, ModelConfig, RunConfig, TaskConfig, check_lr,
                          check_one_of)
from hizfo.errors import ConfigError

# the values of the enumerated fields (typed str: OmegaConf rejects Literal annotations)
AlphaMode = Literal["update", "loss"]
ZOUpdate = Literal["estimate", "random_direction", "disabled"]
ZOOptimizer = Literal["sgd", "adamw"]
ZOScope = Literal["all", "below"]
ALPHA_MODES, ZO_UPDATES, ZO_OPTIMIZERS, ZO_SCOPES = (get_args(t) for t in (AlphaMode, ZOUpdate, ZOOptimizer, ZOScope))


def check_positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key}: must be > 0, got {value}")


def check_rho(rho: float) -> None:
    if not 0 < rho <= 1:
        raise ConfigError(f"method.rho: must be in (0, 1], got {rho}")


def check_partition_settings(zo_scope: str, buckets: int) -> None:
    """``method.zo_scope`` is a known scope and ``method.buckets`` (Tq, GreenTrainer's cost quantisation) >= 1."""
    check_one_of("method.zo_scope", zo_scope, ZO_SCOPES)
    if buckets < 1:
        raise ConfigError(f"method.buckets: must be >= 1 (Tq, the cost quantisation; 1000 as GreenTrainer), "
                          f"got {buckets}")


def check_lora_values(cfg: Any) -> None:
    """Rank, alpha and dropout in range (the target modules are checked against the model in setup)."""
    if cfg.rank < 1:
        raise ConfigError(f"method.rank: must be >= 1, got {cfg.rank}")
    check_positive("method.alpha", cfg.alpha)
    if not 0.0 <= cfg.lora_dropout < 1.0:
        raise ConfigError(f"method.lora_dropout: must be in [0, 1), got {cfg.lora_dropout}")
    if cfg.target_modules is not None and not cfg.target_modules:
        raise ConfigError("method.target_modules: empty list (use null for the model's defaults)")


@dataclass
class HiZFOConfig(MethodConfig):
    _target_: str = "hizfo.core.hybrid.HiZFO"
    name: str = "hizfo"
    lr: float = 2e-5                  # η_FO (§4.2)
    epochs: int = 3                   # Hi-ZFO stops at 3 epochs (A.2)
    lr_ratio: float = 0.1             # r = η_ZO / η_FO (§5.3, Fig. 3)
    zo_lr: Optional[float] = None     # η_ZO explicitly; wins over lr_ratio
    eps: float = 1e-3                 # ε (§4.2)
    alpha: float = 0.1                # α (§3.4, Table 5, Fig. 4); what it scales: alpha_mode
    alpha_mode: str = "update"        # update: α scales the ZO update (App. D eq. 10) | loss: L_FO + α·L_ZO (Alg. 1 l. 10)
    zo_update: str = "estimate"       # estimate (the method) | random_direction | disabled (controls)
    rho: float = 0.6                  # FLOPs budget ρ (§5.2, Table 4)
    zo_optimizer: str = "sgd"         # sgd: eq. 3, no extra memory; adamw: +3×|Θ_ZO| memory
    zo_scope: str = "all"             # all: every unselected tensor is ZO; below: only those under Θ_FO
    buckets: int = 1000               # Tq, cost quantisation (GreenTrainer)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_rho(self.rho)
        check_lr("method.lr_ratio", self.lr_ratio)
        if self.zo_lr is not None:
            check_lr("method.zo_lr", self.zo_lr)
        check_positive("method.eps", self.eps)
        if not self.alpha >= 0:
            raise ConfigError(f"method.alpha: must be >= 0, got {self.alpha}")
        check_one_of("method.alpha_mode", self.alpha_mode, ALPHA_MODES)
        check_one_of("method.zo_update", self.zo_update, ZO_UPDATES)
        check_partition_settings(self.zo_scope, self.buckets)
        check_one_of("method.zo_optimizer", self.zo_optimizer, ZO_OPTIMIZERS)


@dataclass
class FullFTConfig(MethodConfig):
    _target_: str = "baselines.full_ft.FullFT"
    name: str = "full_ft"


@dataclass
class FTTop2Config(MethodConfig):
    _target_: str = "baselines.ft_top2.FTTop2"
    name: str = "ft_top2"
    top_blocks: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.top_blocks < 1:               # the model's depth caps it in setup (baselines/ft_top2.py)
            raise ConfigError(f"method.top_blocks: must be >= 1, got {self.top_blocks}")


@dataclass
class LoRAConfig(MethodConfig):
    _target_: str = "baselines.lora.LoRA"
    name: str = "lora"
    rank: int = 8                                  # r
    alpha: float = 32.0                            # lora_alpha; the update is scaled by alpha / r
    lora_dropout: float = 0.1                      # active only with train_dropout=true (train mode)
    target_modules: Optional[list[str]] = None     # None: the model's lora_target_modules

    def __post_init__(self) -> None:
        super().__post_init__()
        check_lora_values(self)


@dataclass
class PrefixConfig(MethodConfig):
    _target_: str = "baselines.prefix.PrefixTuning"
    name: str = "prefix"
    num_virtual_tokens: int = 20                   # prefix length (key/value pairs per layer)
    prefix_projection: bool = False                # True: Li & Liang's MLP reparameterisation
    encoder_hidden_size: Optional[int] = None      # the MLP's width when prefix_projection (None: hidden size)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_virtual_tokens < 1:
            raise ConfigError(f"method.num_virtual_tokens: the prefix length must be >= 1, got {self.num_virtual_tokens}")
        if self.encoder_hidden_size is not None and self.encoder_hidden_size < 1:
            raise ConfigError(f"method.encoder_hidden_size: must be >= 1 or null, got {self.encoder_hidden_size}")


@dataclass
class GreenTrainerConfig(MethodConfig):
    _target_: str = "baselines.greentrainer.GreenTrainer"
    name: str = "greentrainer"
    rho: float = 0.7          # GT-0.7 (paper Tables 1–3)
    interval: int = 2         # re-select every 2 epochs
    buckets: int = 1000       # Tq

    def __post_init__(self) -> None:
        super().__post_init__()
        check_rho(self.rho)
        check_partition_settings("all", self.buckets)
        if self.interval < 1:
            raise ConfigError(f"method.interval: must be >= 1, got {self.interval}")


@dataclass
class MeZOConfig(MethodConfig):
    _target_: str = "baselines.mezo.MeZO"
    name: str = "mezo"
    lr: float = 1e-6                     # MeZO's full-parameter range is 1e-6 … 1e-7
    eps: float = 1e-3                    # ε, the perturbation scale
    schedule: str = "constant"           # MeZO uses a constant learning rate

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("method.eps", self.eps)


@dataclass
class BilevelZOFOConfig(MethodConfig):
    _target_: str = "baselines.bilevel_zofo.BilevelZOFO"
    name: str = "bilevel_zofo"
    lr: float = 2e-5                       # must equal upper_lr (the yaml sets lr: ${.upper_lr})
    upper_lr: float = 2e-5                 # upper AdamW: p_U (and θ unless backbone_lr is set)
    lower_lr: float = 1e-4                 # lower Adam on p_L (constant)
    backbone_lr: Optional[float] = None    # upper AdamW's lr for θ (None: upper_lr)
    lower_steps: int = 10                  # K: batches (one lower step each) per upper step (sweeps 10, 20, 30)
    lam: float = 1.0                       # λ: weight of the penalty L(θ,p_U;train) − L(θ,p_L;train)
    eps: float = 1e-3                      # ε of the one-sided ZO estimate on θ
    rank: int = 8                          # both adapters are LoRA with these values
    alpha: float = 16.0                    # the reference's sweeps: --lora_alpha=16 (run_bilevel.py's default too)
    lora_dropout: float = 0.0              # as the reference's LoRA
    schedule: str = "constant"             # the reference's upper optimizer has no scheduler
    grad_clip: Optional[float] = 1.0       # the lower step's clip norm (the reference's HF Trainer max_grad_norm)
    target_modules: Optional[list[str]] = None   # None: the model's lora_target_modules

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lr != self.upper_lr:
            raise ConfigError(f"method.lr: Bilevel-ZOFO takes its rates from method.upper_lr / method.lower_lr / "
                              f"method.backbone_lr; lr ({self.lr}) must equal upper_lr ({self.upper_lr})")
        check_lr("method.upper_lr", self.upper_lr)
        check_lr("method.lower_lr", self.lower_lr)
        if self.backbone_lr is not None:
            check_lr("method.backbone_lr", self.backbone_lr)
        if self.lower_steps < 1:
            raise ConfigError(f"method.lower_steps: must be >= 1, got {self.lower_steps}")
        if not self.lam >= 0:
            raise ConfigError(f"method.lam: must be >= 0, got {self.lam}")
        check_positive("method.eps", self.eps)
        check_lora_values(self)


@dataclass
class ZeroShotConfig(MethodConfig):
    _target_: str = "baselines.zero_shot.ZeroShot"
    name: str = "zero_shot"
    lr: float = 0.0
    epochs: int = 1
    max_steps: Optional[int] = 0         # no update step: the loop goes straight to evaluation

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_steps != 0:
            raise ConfigError(f"method.max_steps: zero_shot trains nothing and needs 0, got {self.max_steps}")


# the registry: every method a run can name (conf/method/<name>.yaml composes /schema/method/<name>)
METHODS: dict[str, type] = {
    "full_ft": FullFTConfig, "ft_top2": FTTop2Config, "lora": LoRAConfig, "prefix": PrefixConfig,
    "greentrainer": GreenTrainerConfig, "mezo": MeZOConfig, "bilevel_zofo": BilevelZOFOConfig,
    "zero_shot": ZeroShotConfig, "hizfo": HiZFOConfig,
}


def implementation(name: str) -> type:
    """The class that implements method ``name`` (its config's ``_target_``), imported now."""
    module, _, cls = METHODS[name]._target_.rpartition(".")
    return getattr(importlib.import_module(module), cls)


def build_config(cls: type, values: dict[str, Any]) -> Any:
    """A typed config from the keyword arguments Hydra instantiates a method with: the one way a method's
    config is built. A key the schema lacks is one line (composition refuses it first; this covers direct use)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise ConfigError(f"method.{unknown[0]}: not a key of {cls.__name__} "
                          f"(its keys: {', '.join(sorted(f.name for f in fields(cls) if f.name != '_target_'))})")
    plain = {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, (DictConfig, ListConfig)) else v
             for k, v in values.items()}
    return cls(**plain)


TASK_CONF = Path(__file__).resolve().parent.parent / "conf" / "task"
HUB_ENTRY = "/task_hub@options.hub"     # a task yaml's defaults entry that composes its class's hub sources


def hub_sources() -> dict[str, dict[str, Any]]:
    """The hub sources of each task whose yaml composes them (``- /task_hub@options.hub: <task>``), from the class
    its ``_target_`` names (``HubTask.hub_config``; imported by name, as ``implementation`` imports a method's):
    the class owns them, and the run's config, and so its hash, still carries them as ``task.options.hub``."""
    from omegaconf import OmegaConf
    found = {}
    for path in sorted(TASK_CONF.glob("*.yaml")):
        text = OmegaConf.load(path)
        names = [entry[HUB_ENTRY] for entry in text.get("defaults", []) if HUB_ENTRY in entry]
        if names:
            module, _, cls = str(text._target_).rpartition(".")
            found[names[0]] = getattr(importlib.import_module(module), cls).hub_config()
    return found


_STORED = "_hizfo_schemas"          # register_schemas' note on the ConfigStore of what it stored there


def register_schemas() -> None:
    """Store every schema in Hydra's ConfigStore: the run, model, task and logger schemas, each method's as
    ``/schema/method/<name>`` (conf/method/*.yaml compose them), each hub task's sources as ``/task_hub/<task>``
    (``hub_sources``) and each task's evaluation protocols as ``/task_protocols/<task>`` (hizfo.config
    TASK_PROTOCOLS). Safe to call more than once: a second call with the same schemas and task yamls stores nothing
    (a compose calls it, and storing took about a third of a compose's time)."""
    from hydra.core.config_store import ConfigStore
    cs = ConfigStore.instance()
    key = (tuple(METHODS.items()), repr(TASK_PROTOCOLS),
           tuple((path.name, path.stat().st_mtime_ns) for path in sorted(TASK_CONF.glob("*.yaml"))))
    if getattr(cs, _STORED, None) == key:         # on the store itself: a new ConfigStore has none
        return
    cs.store(name="run_schema", node=RunConfig)
    cs.store(group="schema/model", name="model", node=ModelConfig)
    cs.store(group="schema/task", name="task", node=TaskConfig)
    cs.store(group="schema/logger", name="logger", node=LoggerConfig)
    for name, schema in METHODS.items():
        cs.store(group="schema/method", name=name, node=schema)
    for name, sources in hub_sources().items():
        cs.store(group="task_hub", name=name, node=sources)
    for name, protocols in TASK_PROTOCOLS.items():
        cs.store(group="task_protocols", name=name, node={p: c.as_config() for p, c in protocols.items()})
    setattr(cs, _STORED, key)
