"""Will it fit? ``python -m hizfo.run.plan [-m] [plan.KEY=VALUE ...] [run.py overrides ...]``

Prints, per device, the predicted peak of a run split by category (hizfo/core/memory.py), the phase that sets it,
and the smallest world size that fits a GPU, with FSDP2 sharding (the distributed layout: docs/design.md, "Many
processes") and without. ``-m`` expands comma lists and an experiment preset's grid (``experiment=table3``) and prints one row per cell. Never loads
weights: the model's shape comes from its config (hizfo/core/shapes.py).

Planner keys (not run keys: run.py refuses them; a run's own check is switched off by HIZFO_PLAN_ENFORCE=0):
plan.gpu_gb (default 80: a vendor's size, compared as torch reports it less a headroom, hizfo/run/plan_gpu.py),
plan.world_size (1, a divisor of the global batch), plan.fsdp (true when world_size > 1),
plan.device (cuda), plan.threads (1), plan.enforce (true: exit 1 when the config, or a cell of the grid, does not
fit plan.gpu_gb at plan.world_size, so ``python -m hizfo.run.plan ... && sbatch ...`` submits only what fits; false:
report only, exit 0), plan.tflops (100: the sustained TFLOP/s per device the rough time per epoch assumes),
plan.train_examples (the task's train split size). Bad input: one line, exit 2.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any, Iterable, Optional

from hizfo.core.memory import GiB, Prediction, Setting, smallest_world_size
from hizfo.core.shapes import ModelShape
from hizfo.errors import ConfigError
# the one config's verdict lives in plan_fit (the run asks it too); re-exported for the report's callers
from hizfo.run.plan_fit import (PlanOptions, fits_line, fits_with_shard_profile, measured_like,  # noqa: F401
                                 plan_config, setting_of, stored_selection)
from hizfo.run.plan_gpu import Gpu

PLAN_KEYS = {"gpu_gb": float, "world_size": int, "fsdp": bool, "device": str, "threads": int, "enforce": bool,
             "tflops": float, "train_examples": int}


def _parse_bool(key: str, text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise ConfigError(f"plan.{key}: '{text}' is not true or false")


def split_args(argv: list[str]) -> tuple[bool, PlanOptions, list[str]]:
    """(-m given, the plan.* options, the run overrides)."""
    multi = "-m" in argv or "--multirun" in argv
    values: dict[str, Any] = {}
    rest = []
    for arg in argv:
        if arg in ("-m", "--multirun"):
            continue
        key, eq, value = arg.partition("=")
        if key.startswith("plan.") and eq:
            name = key[5:]
            if name not in PLAN_KEYS:
                raise ConfigError(f"{key}: not a planner key (keys: {', '.join('plan.' + k for k in PLAN_KEYS)})")
            try:
                values[name] = _parse_bool(name, value) if PLAN_KEYS[name] is bool else PLAN_KEYS[name](value)
            except ValueError as exc:
                raise ConfigError(f"{key}: '{value}' is not a {PLAN_KEYS[name].__name__}") from exc
        else:
            rest.append(arg)
    options = PlanOptions(**values)
    options.check()
    return multi, options, rest


def describe(cfg: Any, shape: ModelShape, s: Setting, pred: Prediction, options: PlanOptions) -> list[str]:
    """The one-config report."""
    g = lambda b: f"{b / GiB:.2f}"                                          # noqa: E731
    gpu = options.gpu()
    lines = [f"model {shape.name} (shape from {shape.source}), method {s.method}, precision {s.precision}, "
             f"batch {s.batch} x {s.seq_len} tokens, world size {s.world_size}"
             f"{' (FSDP2)' if s.fsdp else ''}, device {s.device}"]
    lines += breakdown(pred)
    lines.append(f"profiling peak {g(pred.profiling)} GiB")
    lines.append(f"generation peak {g(pred.generation)} GiB (beam {s.beams}, eval batch {s.eval_batch})")
    lines.append(f"peak: {g(pred.peak)} GiB, set by {pred.peak_phase}; training and profiling (what a record's "
                 f"measured peak covers): {g(measured_like(pred))} GiB")
    if pred.selection:
        lines.append(f"selection: {pred.selection}")
    lines += [f"note: {n}" for n in pred.notes]
    lines.append(epoch_line(cfg, shape, s, pred, options))
    where = f"{options.gpu_gb:g} GB GPUs ({gpu.usable_bytes / GiB:.2f} GiB usable)"
    for fsdp in (True, False):
        n = smallest_world_size(shape, replace(s, world_size=1), gpu.usable_bytes, fsdp)
        layout = "with FSDP2 sharding" if fsdp else "data parallel, unsharded"
        lines.append(f"{where}, {layout}: " + (f"world size {n} fits" if n else
                     f"no world size dividing the global batch {s.batch} fits"))
        m = fits_with_shard_profile(shape, s, gpu.usable_bytes, n) if fsdp else None   # the whole-model profile
        if m:
            lines.append(f"{where}, with FSDP2 sharding and profile_shards=true (the profile on the shards, one "
                         f"process's selection up to summation order): world size {m} fits")
    return lines


def breakdown(pred: Prediction) -> list[str]:
    """The training peak's moment by category, beside the backward's largest moment where another moment (at
    OPT-13B the AdamW step, which holds no activations) sets the peak: the activations show either way."""
    g = lambda b: f"{b / GiB:.2f}"                                          # noqa: E731
    backward = [m for m in ("loss", "head backward", "block backward") if m in pred.moments]
    other = max(backward, key=lambda m: sum(pred.moments[m].values())) if backward else None
    if other is None or other == pred.moment:
        lines = [f"training peak per device: {g(pred.training_peak)} GiB at the {pred.moment}:"]
        return lines + [f"  {k:<12} {g(v):>9} GiB" for k, v in pred.training.items()]
    lines = [f"training peak per device: {g(pred.training_peak)} GiB at the {pred.moment}; the backward's largest "
             f"moment ({other}): {g(sum(pred.moments[other].values()))} GiB",
             f"  {'GiB':<12} {pred.moment:>16} {other:>16}"]
    return lines + [f"  {k:<12} {g(v):>16} {g(pred.moments[other][k]):>16}" for k, v in pred.training.items()]


def check_world_size(s: Setting, key: str = "plan.world_size") -> None:
    """A distributed run splits the global batch evenly over its ranks: a world size must divide it."""
    if s.batch % s.world_size:
        allowed = ", ".join(str(n) for n in range(1, s.batch + 1) if s.batch % n == 0)
        raise ConfigError(f"{key}: {s.world_size} does not divide the global batch {s.batch} (task.batch_size); "
                          f"allowed: {allowed}")


def epoch_line(cfg: Any, shape: ModelShape, s: Setting, pred: Prediction, options: PlanOptions) -> str:
    """The rough time per epoch (hizfo/core/step_time.py), or why there is none."""
    from hizfo.core.memory_trace import base_costs
    from hizfo.core.step_time import epoch_estimate
    limit = cfg.task.get("train_limit")
    examples = options.train_examples or (int(limit) if limit else None)
    est = epoch_estimate(base_costs(shape, s), s.method, set(pred.fo_names), s.cfg(), str(cfg.task.name), s.batch,
                         s.world_size, options.tflops, examples)
    return est.line() if est else (f"rough time per epoch: the train size of task '{cfg.task.name}' is not known "
                                   f"offline (plan.train_examples=N gives it)")


def sweep_cells(task_overrides: list[str], sweeper_params: dict[str, Any]) -> list[list[str]]:
    """Every job of a multirun, as Hydra's basic sweeper expands it (sweeper params first, then the command line)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    arguments = [f"{k}={v}" for k, v in (sweeper_params or {}).items()] + list(task_overrides)
    parsed = OverridesParser.create().parse_overrides(arguments)
    batches = BasicSweeper.split_arguments(parsed, None)
    return batches[0] if batches and batches[0] else [list(task_overrides)]


def grid(overrides: list[str]) -> list[list[str]]:
    """Every cell of a multirun: comma lists on the command line and the preset's hydra.sweeper.params."""
    from hizfo.run.session import compose
    plain = [o for o in overrides if "," not in o.partition("=")[2]]
    cfg = compose(plain, hydra=True)
    return sweep_cells(overrides, {str(k): v for k, v in (cfg.hydra.sweeper.get("params") or {}).items()})


def table(rows: Iterable[tuple[list[str], Setting, Prediction]], gpu: Gpu) -> list[str]:
    head = "| cell | training GiB | profiling GiB | generation GiB | peak GiB (phase) | fits |"
    out = [head, "|" + "---|" * 6]
    for overrides, s, p in rows:
        cell = " ".join(o for o in overrides if o.split("=")[0] in ("model", "method", "task", "precision"))
        fits = "yes" if gpu.fits(p.peak) else "no"
        out.append(f"| {cell} | {p.training_peak / GiB:.2f} | {p.profiling / GiB:.2f} | {p.generation / GiB:.2f} | "
                   f"{p.peak / GiB:.2f} ({p.peak_phase}) | {fits} |")
    return out


def main(argv: Optional[list[str]] = None) -> int:
    try:
        from hizfo.run.session import compose
        multi, options, overrides = split_args(list(sys.argv[1:] if argv is None else argv))
        gpu = options.gpu()
        if not multi:
            cfg = compose(overrides)
            shape, s, pred = plan_config(cfg, options)
            check_world_size(s)
            print("\n".join(describe(cfg, shape, s, pred, options)))
            line = fits_line(pred, s, gpu, shape, f"at world size {options.world_size}",
                             "plan.enforce=false: report only")
            if line:
                print(line)
            return 1 if line and options.enforce else 0
        rows, failing = [], []
        for cell in grid(overrides):
            shape, s, pred = plan_config(compose(cell), options)
            check_world_size(s, f"plan.world_size (cell {' '.join(cell)})")
            rows.append((cell, s, pred))
            line = fits_line(pred, s, gpu, shape, " ".join(cell), "plan.enforce=false: report only")
            if line:
                failing.append(line)
        print("\n".join(table(rows, gpu)))
        print(f"{len(failing)} of {len(rows)} cells do not fit a {options.gpu_gb:g} GB GPU ({gpu.text()}) at world "
              f"size {options.world_size}" + (":" if failing else ""))
        print("\n".join(f"  {f}" for f in failing))
        return 1 if failing and options.enforce else 0
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
