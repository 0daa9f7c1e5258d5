"""The paper's tables and figures: each one's grid (paper scale and CPU twin) and how it is shown.

This module is the one place that names the grids and the tables. ``scripts/gen_experiment_grids.py`` writes each
grid's ``hydra.sweeper.params`` (``sweeper_params``) into ``conf/experiment/<name>.yaml`` and ``<name>_cpu.yaml``
(creating a preset that is not there yet), and ``tests/unit/apps/test_presets.py`` fails when a committed yaml differs
from what it writes. A spec's layout facts (layout, costs, extra quantities, row labels, notes, plot) are what
analysis.paper.tables and analysis.paper.sweeps read: neither names a table.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional

from analysis.render import MISSING
from analysis.specs import (ALPHA_MODE_METHODS, FLOPS_SHARE, LABEL_RUN_KEYS, QUANTITY_HEADERS, SWEEP_SYMBOL, Grid,
                            method_display)


# How a table lays out its grid (analysis.paper.tables renders each):
#   methods_by_task      a section per model, a row per method; per task (Mem., Time and) the score
#   sweep_rows           a row per swept value (a section per method); per model (Time, Mem,) score and extras
#   sweep_by_model_task  a row per swept value (a section per method); a score column per model × task
LAYOUTS = ("methods_by_task", "sweep_rows", "sweep_by_model_task")


@dataclass(frozen=True)
class ExperimentSpec:
    """One paper table or figure: its paper-scale grid, its CPU twin's grid and how it is shown.

    The layout facts live here, so analysis.paper.tables and analysis.paper.sweeps hold no table names."""
    name: str
    title: str
    paper: Grid
    cpu: Grid
    kind: str = "table"                  # table | figure
    layout: Optional[str] = None         # one of LAYOUTS; a table needs one
    costs: bool = False                  # memory and time beside the score (table columns, plot panels)
    extra: tuple[str, ...] = ()          # QUANTITY_HEADERS keys shown per cell and kept in the long form
    row_labels: tuple[tuple[float, str], ...] = ()   # swept value -> the paper's row label (else "ρ = 0.2")
    row_header: Optional[str] = None     # the row-label column's header where the layout's default does not fit
    notes: tuple[str, ...] = ()          # under the table, after the layout's own
    methods_notes: tuple[str, ...] = ()  # also under the table where its grid holds several methods
    plot: Optional[str] = None           # the file stem of its sweep plot (analysis.paper.sweeps); None: not plotted

    def __post_init__(self) -> None:
        if self.kind not in ("table", "figure"):
            raise ValueError(f"{self.name}: kind {self.kind!r} is neither 'table' nor 'figure'")
        if (self.kind == "table") != (self.layout is not None) or (self.layout and self.layout not in LAYOUTS):
            raise ValueError(f"{self.name}: a table needs one of the layouts {LAYOUTS}, a figure none "
                             f"(got {self.layout!r})")
        if self.plot is not None and not self.paper.sweep_key:
            raise ValueError(f"{self.name}: only a sweep's grid can be plotted (plot={self.plot!r})")
        unknown = sorted(set(self.extra) - set(QUANTITY_HEADERS))
        if unknown:
            raise ValueError(f"{self.name}: no quantity {unknown}; known: {sorted(QUANTITY_HEADERS)}")

    def grids(self) -> tuple[Grid, Grid]:
        return (self.paper, self.cpu)

    def row_label(self, key: str, value: float) -> str:
        """A swept value's row label: the paper's own where the spec names one, else ``ρ = 0.2``."""
        return dict(self.row_labels).get(value, f"{SWEEP_SYMBOL.get(key, key)} = {value:g}")


NLP_TASKS = ("scitldr", "dialogsum", "webquestions")
REASONING_TASKS = ("gsm8k", "math500", "humaneval")
TABLE1_METHODS = ("full_ft", "ft_top2", "prefix", "lora", "mezo", "bilevel_zofo", "greentrainer", "hizfo")
TABLE2_METHODS = ("zero_shot", "full_ft", "lora", "greentrainer", "mezo", "bilevel_zofo", "hizfo")
TABLE3_METHODS = ("full_ft", "lora", "greentrainer", "hizfo")
RHO_VALUES = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
TABLE5_ALPHAS = (0.1, 0.0)
# both readings of α; under `update`, α = 0 is the ZO-off control (bit-identical, tests/unit/core/test_controls.py)
ALPHA_READINGS = ("hizfo", "hizfo_alpha_loss")
LR_RATIOS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
ALPHAS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
# the CPU twin of Table 3's size ladder: tiny OPTs of growing width (a stand-in for 350M … 13B)
TINY_OPT_WIDTHS = (32, 64, 128, 256, 512)


def tiny_opt(width: int) -> str:
    """The model label of a tiny OPT whose width a sweep overrode."""
    return f"tiny-opt (arch.hidden_size={width})"


_SHARE_HEADER = QUANTITY_HEADERS[FLOPS_SHARE]
TABLE4_NOTES = (
    f"{_SHARE_HEADER[0].upper() + _SHARE_HEADER[1:]}: the backward MACs the selected first-order "
    "set spends over those of a full backward pass, from the record's partition block (mean over seeds; "
    f"'{MISSING}' where the record has none, as for the paper's numbers). ρ is a share of forward + backward "
    "FLOPs; where ρ leaves no backward budget (ρ_bp ≤ 0), ρ_bp is set to 0.05 (hizfo/core/costs.py "
    "backward_budget, as GreenTrainer), so small ρ select the same set and give identical rows.",)
TABLE5_ROW_LABELS = ((0.1, "Hi-ZFO"), (0.0, "w/o ZO-Loss"))
TABLE5_NOTES = ('"w/o ZO-Loss" is α = 0; "Hi-ZFO" is α = 0.1.',)
# where a grid holds both readings of α
ALPHA_READING_NOTES = (
    f"{method_display('hizfo')}: α scales the ZO update (method.alpha_mode=update, App. D eq. 10; "
    f"α = 0 is the ZO-off control). {method_display('hizfo_alpha_loss')}: L_FO + α·L_ZO "
    "(alpha_mode=loss, Alg. 1 line 10), also records written before alpha_mode existed; its α = 0 row "
    "keeps the ZO update and drops only the coupling. Effective ZO step at α = 0.1: α·η_ZO = 2e-7 "
    "(update) against η_ZO = 2e-6 (loss, §4.2's ZO rate).",)

EXPERIMENTS: dict[str, ExperimentSpec] = {spec.name: spec for spec in (
    ExperimentSpec("table1", "Table 1: memory, time and scores per method (paper: SciTLDR, DialogSum, WebQuestions)",
                   Grid(("opt-2.7b", "bloomz-3b", "qwen2.5-3b-instruct"), NLP_TASKS, TABLE1_METHODS),
                   Grid(("tiny-opt", "tiny-bloom", "tiny-qwen2"), ("toy",), TABLE1_METHODS),
                   layout="methods_by_task", costs=True),
    ExperimentSpec("table2", "Table 2: reasoning and coding (paper: Qwen2-7B on GSM8K, MATH500, HumanEval)",
                   Grid(("qwen2-7b",), REASONING_TASKS, TABLE2_METHODS),
                   Grid(("tiny-qwen2 (precision=bf16-mixed)",), ("toy",), TABLE2_METHODS),
                   layout="methods_by_task"),
    ExperimentSpec("table3", "Table 3: impact of the model size (paper: OPT-350M … OPT-13B)",
                   Grid(("opt-350m", "opt-1.3b", "opt-2.7b", "opt-6.7b", "opt-13b"), NLP_TASKS, TABLE3_METHODS),
                   Grid(tuple(tiny_opt(w) for w in TINY_OPT_WIDTHS), ("toy",), TABLE3_METHODS),
                   layout="methods_by_task", costs=True),
    ExperimentSpec("table4", "Table 4: the FLOPs-based update ratio ρ (paper: DialogSum)",
                   Grid(("opt-1.3b", "opt-2.7b"), ("dialogsum",), ("hizfo",), "rho", RHO_VALUES),
                   Grid((tiny_opt(64), tiny_opt(128)), ("toy",), ("hizfo",), "rho", RHO_VALUES),
                   layout="sweep_rows", costs=True, extra=(FLOPS_SHARE,), notes=TABLE4_NOTES, plot="rho_sweep"),
    ExperimentSpec("table5", "Table 5: the ZO-loss weight α (α = 0 is 'w/o ZO-Loss')",
                   Grid(("opt-2.7b", "bloomz-3b"), NLP_TASKS, ALPHA_READINGS, "alpha", TABLE5_ALPHAS),
                   Grid(("tiny-opt", "tiny-bloom"), ("toy",), ALPHA_READINGS, "alpha", TABLE5_ALPHAS),
                   layout="sweep_by_model_task", row_labels=TABLE5_ROW_LABELS, row_header="Method (α)",
                   notes=TABLE5_NOTES, methods_notes=ALPHA_READING_NOTES),
    ExperimentSpec("fig3", "Figure 3: the learning-rate ratio r = η_ZO/η_FO (paper: OPT-2.7B, DialogSum)",
                   Grid(("opt-2.7b",), ("dialogsum",), ("hizfo",), "lr_ratio", LR_RATIOS),
                   Grid(("tiny-opt",), ("toy",), ("hizfo",), "lr_ratio", LR_RATIOS), kind="figure",
                   plot="lr_ratio_sweep"),
    ExperimentSpec("fig4", "Figure 4: the ZO-loss weight α (paper: OPT-2.7B, DialogSum)",
                   Grid(("opt-2.7b",), ("dialogsum",), ALPHA_READINGS, "alpha", ALPHAS),
                   Grid(("tiny-opt",), ("toy",), ALPHA_READINGS, "alpha", ALPHAS), kind="figure",
                   plot="alpha_sweep"),
)}
TABLES = tuple(name for name, spec in EXPERIMENTS.items() if spec.kind == "table")


def _model_overrides(label: str) -> dict[str, str]:
    """``tiny-opt (arch.hidden_size=64)`` -> {model: tiny-opt, model.arch.hidden_size: 64}: what launches it."""
    name, _, rest = label.partition(" (")
    items = [item.partition("=") for item in rest.rstrip(")").split(", ")] if rest else []
    return {"model": name, **{key if key in LABEL_RUN_KEYS else f"model.{key}": value for key, _, value in items}}


def _method_overrides(label: str) -> dict[str, str]:
    """``hizfo_alpha_loss`` -> {method: hizfo, method.alpha_mode: loss}: the inverse of ``method_label``."""
    name = label.removesuffix("_alpha_loss")
    if name != label and name in ALPHA_MODE_METHODS:
        return {"method": name, "method.alpha_mode": "loss"}
    return {"method": label}


def _axes(rows: list[dict[str, str]], defaults: dict[str, str]) -> dict[str, str]:
    """One comma-separated value list per key whose product is exactly ``rows`` (a key a row lacks takes its
    default); ValueError when the rows are no such product."""
    keys = list(dict.fromkeys(key for row in rows for key in row))
    try:
        full = [tuple(row[key] if key in row else defaults[key] for key in keys) for row in rows]
    except KeyError as exc:
        raise ValueError(f"{exc.args[0]} is set for some grid entries and has no default for the others") from None
    values = [list(dict.fromkeys(row[i] for row in full)) for i in range(len(keys))]
    if len(set(full)) != len(full) or set(full) != set(itertools.product(*values)):
        raise ValueError(f"{rows} is not one value list per key multiplied out")
    return {key: ",".join(axis) for key, axis in zip(keys, values)}


def sweeper_params(grid: Grid) -> dict[str, str]:
    """The ``hydra.sweeper.params`` that launch exactly ``grid``, in the order Hydra's basic sweeper multiplies
    them: models (and the overrides their labels carry), tasks, methods (and α's reading), the swept values."""
    from hizfo.registry import METHODS           # torch-free, as analysis.specs reads the defaults
    alpha_mode = {"method.alpha_mode": METHODS["hizfo"]().alpha_mode}
    params = {**_axes([_model_overrides(m) for m in grid.models], {}), "task": ",".join(grid.tasks),
              **_axes([_method_overrides(m) for m in grid.methods], alpha_mode)}
    if grid.sweep_key:
        params[f"method.{grid.sweep_key}"] = ",".join(str(value) for value in grid.sweep_values)
    return params
