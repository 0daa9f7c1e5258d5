"""The names analysis shares: display names, the swept hyperparameters with their defaults and symbols, the grid
type and the per-cell quantities (how a task's score is read and shown: hizfo/tasks/catalogue.py). Beneath both
the paper's tables (analysis/paper/, whose grids are analysis/paper/experiments.py) and the CPU studies
(analysis/study/).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator, Optional

from hizfo.tasks.catalogue import TASKS

# ---------------------------------------------------------------------------------------------------
# display names: config name -> the paper's spelling (one mapping; aliases for the paper's other spellings)

MODEL_DISPLAY: dict[str, str] = {
    "opt-350m": "OPT-350M", "opt-1.3b": "OPT-1.3B", "opt-2.7b": "OPT-2.7B", "opt-6.7b": "OPT-6.7B",
    "opt-13b": "OPT-13B", "bloomz-3b": "BLOOMZ-3B", "qwen2.5-3b-instruct": "Qwen2.5-3B-Instruct",
    "qwen2-7b": "Qwen2-7B", "smollm2-135m": "SmolLM2-135M", "tiny-opt": "tiny-OPT", "tiny-bloom": "tiny-BLOOM",
    "tiny-qwen2": "tiny-Qwen2",
}
# the paper writes both "BLOOMZ-3B" (Tables 1, 3) and "BLOOM-3B" (Table 5) for the same model
MODEL_ALIASES: dict[str, str] = {**{v: k for k, v in MODEL_DISPLAY.items()}, "BLOOM-3B": "bloomz-3b"}
# a model label carries the run's ``model.*`` overrides (without ``model.``) and these run-level keys
# (analysis.loading.model_label): ``tiny-opt (arch.hidden_size=64)``, ``tiny-qwen2 (precision=bf16-mixed)``
LABEL_RUN_KEYS = ("precision",)

METHOD_DISPLAY: dict[str, str] = {
    "zero_shot": "Zero-shot", "full_ft": "Full FT", "ft_top2": "FT-Top2", "prefix": "Prefix-T", "lora": "LoRA",
    "mezo": "MeZO", "bilevel_zofo": "Bilevel-ZOFO", "greentrainer": "GT-0.7", "hizfo": "Hi-ZFO",
    "hizfo_alpha_loss": "Hi-ZFO (α in loss)", "hizfo_zo_off": "Hi-ZFO, ZO off",
    "hizfo_random_dir": "Hi-ZFO, random dir.", "hizfo_random_dir_alpha_loss": "Hi-ZFO, random dir. (α in loss)",
}
# Hi-ZFO and its random-direction control have two readings of α (method.alpha_mode, docs/design.md). A table shows
# the loss reading as its own method; records written before alpha_mode existed used the loss reading.
ALPHA_MODE_METHODS = ("hizfo", "hizfo_random_dir")
ALPHA_MODE_BEFORE_OPTION = "loss"


def method_label(method_cfg: dict) -> str:
    """The method a table shows for a record's method config: its name, ``_alpha_loss`` for α's loss reading."""
    name = method_cfg["name"]
    if name in ALPHA_MODE_METHODS and method_cfg.get("alpha_mode", ALPHA_MODE_BEFORE_OPTION) == "loss":
        return f"{name}_alpha_loss"
    return name
# "Bieval-ZOFO" is the paper's typo for Bilevel-ZOFO; Table 2 writes "FT (Full Fine-Tuning)"
METHOD_ALIASES: dict[str, str] = {**{v: k for k, v in METHOD_DISPLAY.items()}, "Bieval-ZOFO": "bilevel_zofo",
                                  "FT (Full Fine-Tuning)": "full_ft", "FT": "full_ft", "w/o ZO-Loss": "hizfo"}

# each task's display name, score keys, header and decimals: hizfo/tasks/catalogue.py (torch-free)
TASK_DISPLAY: dict[str, str] = {name: task.display for name, task in TASKS.items()}

# Hyperparameters that tell the cells of the sweeps apart, with the paper's defaults (§4.2, A.2).
# A record counts for a cell only when each of these equals the cell's value (the default unless swept).
def _schema_defaults(method: str, keys: tuple[str, ...]) -> dict[str, float]:
    """The defaults of ``keys`` in a method's schema dataclass: the one source of hyperparameter defaults."""
    from hizfo.registry import METHODS           # torch-free: analysis needs neither torch nor peft
    defaults = METHODS[method]()
    return {key: float(getattr(defaults, key)) for key in keys}


_HIZFO_DEFAULTS = _schema_defaults("hizfo", ("rho", "alpha", "lr_ratio"))
SWEPT_DEFAULTS: dict[str, dict[str, float]] = {
    **{name: dict(_HIZFO_DEFAULTS) for name in ("hizfo", "hizfo_alpha_loss", "hizfo_random_dir",
                                                "hizfo_random_dir_alpha_loss")},
    "hizfo_zo_off": {"rho": _HIZFO_DEFAULTS["rho"]},   # no ZO step: α and r do not change what it computes
    "greentrainer": _schema_defaults("greentrainer", ("rho",)),
}
SWEPT_KEYS: tuple[str, ...] = ("rho", "alpha", "lr_ratio")
SWEEP_SYMBOL: dict[str, str] = {"rho": "ρ", "alpha": "α", "lr_ratio": "r = η_ZO/η_FO"}


def model_display(label: str) -> str:
    """``tiny-opt (arch.hidden_size=64)`` -> ``tiny-OPT (hidden_size=64)``; ``opt-2.7b`` -> ``OPT-2.7B``."""
    name, _, rest = label.partition(" (")
    shown = MODEL_DISPLAY.get(name, name)
    return f"{shown} ({rest.replace('arch.', '')}" if rest else shown


def method_display(method: str, rho: Optional[float] = None) -> str:
    """The paper's method name; GreenTrainer carries its ρ (GT-0.7)."""
    if method == "greentrainer" and rho is not None and round(rho, 6) != 0.7:
        return f"GT-{rho:g}"
    return METHOD_DISPLAY.get(method, method)


# ---------------------------------------------------------------------------------------------------
# grids


@dataclass(frozen=True)
class Grid:
    """models × tasks × methods × (one swept hyperparameter's values); model entries are model labels."""
    models: tuple[str, ...]
    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    sweep_key: Optional[str] = None
    sweep_values: tuple[float, ...] = ()

    def cells(self) -> Iterator[tuple[str, str, str, Optional[float]]]:
        """Every (model, task, method, swept value or None) the grid runs."""
        values: tuple[Optional[float], ...] = self.sweep_values if self.sweep_key else (None,)
        yield from itertools.product(self.models, self.tasks, self.methods, values)

    def __len__(self) -> int:
        return len(self.models) * len(self.tasks) * len(self.methods) * max(1, len(self.sweep_values))


# per-cell quantities a table may show beside the score, with their column headers (analysis.cells.aggregate_cells
# computes each): the partition block's share of a full backward pass the selection spends (hizfo/core/partition.py)
FLOPS_SHARE = "backward_flops_share"
QUANTITY_HEADERS: dict[str, str] = {FLOPS_SHARE: "backward FLOPs (share of Full FT)"}


def cell_hparams(method: str, sweep_key: Optional[str], value: Optional[float]) -> dict[str, Optional[float]]:
    """The swept hyperparameters a cell of ``method`` requires: the paper's defaults, the swept one replaced."""
    wanted: dict[str, Optional[float]] = dict(SWEPT_DEFAULTS.get(method, {}))
    if sweep_key is not None and sweep_key in wanted:
        wanted[sweep_key] = value
    return {key: wanted.get(key) for key in SWEPT_KEYS}
