"""Check a GPU machine end to end before a long sweep: every method x precision through run.py, then the costs.

    scripts/gpu_check.sh [--out DIR] [--minutes N]          # or: python -m benchmarks.gpu_check ...
    python -m benchmarks.gpu_check --cpu-smoke               # the same matrix at a tiny shape on CPU (the tests)

What it does, in one process:
  1. installs what is missing (hydra-core, omegaconf, rouge-score and their dependencies) offline from wheelhouse/
     (scripts/make_wheelhouse.sh builds it), and says in one line what it could not install;
  2. runs every training method and both controls (every conf/method/*.yaml but zero_shot) x precision in
     {fp32, bf16-mixed, bf16} through ``hizfo.run.session.run`` (what ``python run.py`` calls, so the same validation, loop,
     meters and record), 10 steps each on ``task=toy`` with random-init weights at OPT-1.3B shape
     (conf/model/opt-1.3b-shape.yaml, built once by run.py's load_model and saved, then loaded by every cell;
     --cpu-smoke: tiny-opt), zero-shot once per precision, and bf16 MeZO at lr 0;
  3. checks each cell's record: ``ok``; the training loss finite; bf16 MeZO at lr 0 leaves the weights
     bit-identical (its final_params_sha256 equals the untouched bf16 zero-shot model's); bf16 and bf16-mixed
     Hi-ZFO (and its controls) change >= 99 % of Θ_FO in every one of the 10 steps (fo_changed_fraction_min);
  4. measures per precision with benchmarks/harness.py (fresh model per row, hizfo.run.meters: CUDA max allocated,
     reset once the model exists; CUDA synchronised around every timer), as ratios to Full FT at the same
     precision: step time, peak, profiling time in Full FT steps, profiling's peak against a training step's;
     and MeZO's peak against a plain forward's;
  5. writes gpu_check.json and gpu_check.md to --out, prints one verdict line per cell and the summary line
     ``gpu_check: cells_ok=N/M ...``; exits 1 if any cell failed, 2 on bad input.

--inject-failure adds one cell that must fail (Full FT at lr 1e30 diverges: its loss stops being finite and the
loop's divergence check fails the run); it is the check's own self-test and is marked ``injected`` in the JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent

PRECISIONS = ("fp32", "bf16-mixed", "bf16")      # hizfo.core.precision.PRECISIONS (not imported: torch loads later)
STEPS = 10                                      # per training cell: the Θ_FO check is "in 10 steps"
MOVED_MIN = 0.99                                # share of Θ_FO every bf16 / bf16-mixed Hi-ZFO step must change
INJECTED_LR = 1e30                              # --inject-failure: Full FT at this rate diverges at once
CORE = ("full_ft", "hizfo", "mezo")             # run first, and kept when --minutes is short
MEASURED_ROWS = ("forward", "full_ft", "hizfo", "mezo")   # benchmarks/harness.py rows, per precision
# module -> distribution: what the check imports that a stock CUDA PyTorch image lacks (torch, transformers, peft,
# accelerate, numpy, PyYAML, regex, tqdm come with it); wandb, datasets and submitit are not imported here
# (logger=none, task=toy, launcher=local)
NEEDED = {"hydra": "hydra-core", "omegaconf": "omegaconf", "antlr4": "antlr4-python3-runtime",
          "rouge_score": "rouge-score", "nltk": "nltk", "absl": "absl-py"}


@dataclass(frozen=True)
class Scale:
    """Where the check runs and at what size; the seconds are the planning estimates --minutes divides."""
    device: str
    model: str                      # conf/model/<model>.yaml: the shape, built once (random init) and saved
    threads: list[str]              # run.py overrides for the CPU threads
    harness: list[str]              # benchmarks/harness.py arguments for the measurements
    timed_steps: int                # harness steps timed per row, after one warm-up
    cell_s: float                   # estimated seconds per cell (model build + 10 steps + evaluation)
    measure_s: float                # estimated seconds per precision's measurements (4 fresh models)
    start_s: float                  # imports, CUDA context


# GPU estimates, not yet measured on a GPU (the run also stops starting cells at the deadline): a cell loads the
# saved random-init weights (5.2 GB fp32) and moves them to the GPU, 10 steps, 8 short generations; the start builds
# the weights once on the CPU (~10 s for 1.3 G normal draws) and saves them; the harness builds on the GPU
GPU = Scale(device="cuda", model="opt-1.3b-shape", threads=[],
            harness=["--shape", "opt-1.3b", "--batch", "8", "--tokens", "128"], timed_steps=5,
            cell_s=8.0, measure_s=25.0, start_s=45.0)
CPU_SMOKE = Scale(device="cpu", model="tiny-opt", threads=["num_threads=1"],
                  harness=["--shape", "opt-125m", "--layers", "2", "--hidden", "128", "--ffn", "512", "--vocab", "2048",
                           "--batch", "2", "--tokens", "32"], timed_steps=2, cell_s=1.0, measure_s=3.0, start_s=8.0)
# every cell: the toy task, small, no tuning file (the methods' schema defaults: the paper's rates), no W&B
COMMON = ["task=toy", "~tuning", "logger=none", "task.options.n_train=160", "task.options.n_eval=8",
          "task.eval_batch_size=8", "task.generation.max_new_tokens=4", "eval_before_training=false",
          "overwrite=true"]


@dataclass
class Cell:
    name: str                               # method/precision[+tag]
    method: str
    precision: str
    overrides: list[str]
    injected: bool = False
    status: str = "planned"                 # ok | failed | skipped
    problems: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    record: Optional[str] = None
    log: Optional[str] = None               # what run.py printed for the cell (the console keeps the verdicts)
    seconds: Optional[float] = None

    @property
    def trains(self) -> bool:
        return self.method != "zero_shot"


class BadInput(Exception):
    """One line for the user; exit 2."""


def say(line: str) -> None:
    print(line, flush=True)


def method_names() -> list[str]:
    """Every method config (conf/method/*.yaml): the methods, the controls, zero_shot."""
    return sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml"))


def build_cells(methods: list[str], inject_failure: bool) -> list[Cell]:
    """The matrix in priority order: the core methods, then the rest, zero-shot and MeZO at lr 0 where needed."""
    cells: list[Cell] = []
    training = [m for m in methods if m != "zero_shot"]
    ordered = [m for m in CORE if m in training] + [m for m in training if m not in CORE]
    for method in ordered:
        for precision in ("bf16", "bf16-mixed", "fp32"):
            cells.append(Cell(f"{method}/{precision}", method, precision,
                              [f"method={method}", f"precision={precision}", f"method.max_steps={STEPS}"]))
    if "zero_shot" in methods or "mezo" in methods:       # the lr-0 check compares against zero-shot's weights
        for precision in ("bf16", "bf16-mixed", "fp32"):
            cells.append(Cell(f"zero_shot/{precision}", "zero_shot", precision,
                              ["method=zero_shot", f"precision={precision}"]))
    if "mezo" in methods:
        cells.append(Cell("mezo/bf16+lr0", "mezo", "bf16",
                          ["method=mezo", "precision=bf16", "method.lr=0", f"method.max_steps={STEPS}"]))
    if inject_failure:
        cells.append(Cell("full_ft/fp32+injected", "full_ft", "fp32",
                          ["method=full_ft", "precision=fp32", f"method.lr={INJECTED_LR:g}", "method.max_steps=3",
                           "variant=gpu_check_injected"], injected=True))
    rank = {"full_ft": 0, "hizfo": 0, "mezo": 0, "zero_shot": 1, "mezo/bf16+lr0": 1.5}   # lr 0 after zero-shot
    return sorted(cells, key=lambda c: -1 if c.injected else rank.get(c.name, rank.get(c.method, 2)))


def plan(cells: list[Cell], scale: Scale, minutes: float) -> tuple[list[Cell], list[str], list[str]]:
    """What fits in ``minutes`` by the estimates: (cells to run, precisions to measure, what was dropped)."""
    budget = minutes * 60 - scale.start_s
    if budget < scale.cell_s:
        raise BadInput(f"--minutes: {minutes:g} is below what one cell needs (about "
                       f"{(scale.start_s + scale.cell_s) / 60:.1f} min here, start-up included)")
    core = [c for c in cells if c.injected or c.method in CORE or c.name in ("zero_shot/bf16",)]
    rest = [c for c in cells if c not in core]
    kept, dropped, used = [], [], 0.0
    for cell in core:
        if used + scale.cell_s <= budget:
            kept.append(cell)
            used += scale.cell_s
        else:
            dropped.append(cell.name)
    measured = []
    for precision in ("bf16", "bf16-mixed", "fp32"):
        if used + scale.measure_s <= budget:
            measured.append(precision)
            used += scale.measure_s
        else:
            dropped.append(f"measurements/{precision}")
    for cell in rest:
        if used + scale.cell_s <= budget:
            kept.append(cell)
            used += scale.cell_s
        else:
            dropped.append(cell.name)
    return kept, measured, dropped


# ---------------------------------------------------------------------------------------------------
# step 1: what the check imports, offline from wheelhouse/


def missing_modules() -> list[str]:
    return [module for module in NEEDED if importlib.util.find_spec(module) is None]


def install_missing(wheelhouse: Path) -> list[str]:
    """pip install --no-index from ``wheelhouse`` what is missing; returns the distributions still missing."""
    missing = missing_modules()
    if not missing:
        return []
    wanted = sorted({NEEDED[m] for m in missing})
    if wheelhouse.is_dir():
        say(f"installing offline from {wheelhouse}: {', '.join(wanted)}")
        out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links",
                              str(wheelhouse), *wanted], capture_output=True, text=True)
        if out.returncode != 0:
            lines = [line for line in out.stderr.splitlines() if line.startswith("ERROR")] or out.stderr.splitlines()
            say(f"pip: {(lines or ['failed'])[0].strip()}")
        importlib.invalidate_caches()
    return sorted({NEEDED[m] for m in missing_modules()})


# ---------------------------------------------------------------------------------------------------
# step 2-3: the cells, through hizfo.run.session.run


def compose_run(overrides: list[str]):
    """The run config ``python run.py <overrides>`` composes (hizfo.run.session.compose)."""
    from hizfo.run.session import compose
    return compose(overrides)


def save_random_weights(scale: Scale, out: Path) -> list[str]:
    """Build conf/model/<scale.model>.yaml's random-init model once (run.py's own load_model, seed 0, fp32) and save
    it with its tokenizer; every cell then loads it (model.arch=null model.path=DIR), which takes a second where
    the CPU's random init of OPT-1.3B's shape takes ~10 s. Returns the run.py overrides that select it."""
    from omegaconf import OmegaConf

    from hizfo.core.models import load_model
    from hizfo.run.runspec import hash_of
    kwargs = OmegaConf.to_container(compose_run([f"model={scale.model}"]).model, resolve=True)
    kwargs.pop("_target_")
    folder = out / "weights" / f"{scale.model}-{hash_of(kwargs, 8)}"      # a changed yaml builds anew
    if not (folder / "config.json").exists():
        loaded = load_model(**kwargs, seed=0, precision="fp32")
        tmp = folder.with_name(folder.name + ".tmp")
        loaded.model.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
        tmp.rename(folder)
        del loaded
    return [f"model={scale.model}", "model.arch=null", f"model.path={folder}"]


def run_cell(cell: Cell, scale: Scale, out: Path, model: list[str]) -> dict[str, Any]:
    """``hizfo.run.session.run`` on the config ``python run.py <overrides>`` composes (as
    tests/unit/tasks/test_paper_tasks_on_tiny_models.py does): the record it wrote, or the failed record, or a dict with
    the error."""
    from omegaconf import OmegaConf

    from hizfo.errors import one_line
    from hizfo.run.cli import config_error_in
    from hizfo.run.records import read_record
    from hizfo.run.runspec import RunSpec
    from hizfo.run.session import RunInputs, run

    overrides = [*COMMON, *model, *scale.threads, f"device={scale.device}", f"results_dir={out / 'runs'}",
                 *cell.overrides]
    cfg = compose_run(overrides)
    inputs = RunInputs(overrides=tuple(overrides), output_dir=out / "hydra" / cell.name.replace("/", "_"))
    path = RunSpec.build(OmegaConf.to_container(cfg, resolve=True), overrides).path
    cell.record = str(path)
    log = out / "logs" / f"{cell.name.replace('/', '_')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cell.log = str(log)
    with open(log, "w") as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
        try:
            return run(cfg, inputs)
        except Exception as exc:                  # run wrote a failed record where it got that far
            traceback.print_exc()
            config_error = config_error_in(exc)
            record = read_record(path) or {}
            if record.get("status") != "failed":
                record = {"status": "failed", "error": one_line(config_error or exc)}
            return record


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def judge(cell: Cell, record: dict[str, Any], records: dict[str, dict]) -> None:
    """The cell's checks on its record: ``cell.status`` ok or failed, ``cell.problems`` why."""
    if record.get("status") != "ok":
        cell.problems.append(f"record {record.get('status')}: {record.get('error')}")
    else:
        costs = record.get("costs") or {}
        cell.facts.update(peak_gb=costs.get("peak_memory_gb"), memory_kind=costs.get("memory_kind"),
                          steps=costs.get("steps"))
        if cell.trains:
            losses = [point[1] for point in (record.get("curve") or {}).get("train_loss", [])]
            final = record.get("final_train_loss")
            cell.facts["final_loss"] = final
            if not finite(final) or not all(finite(x) for x in losses):
                cell.problems.append(f"training loss not finite (final {final})")
            if costs.get("steps") != int(_override(cell, "method.max_steps", STEPS)):
                cell.problems.append(f"ran {costs.get('steps')} steps")
            if costs.get("steps") and costs.get("train_seconds") is not None:
                cell.facts["step_s"] = (costs["train_seconds"] - (costs.get("setup_seconds") or 0)) / costs["steps"]
        summary = record.get("method_summary") or {}
        moved = summary.get("fo_changed_fraction_min")
        if moved is not None:
            cell.facts["fo_changed_min"] = moved
            if cell.precision != "fp32" and moved < MOVED_MIN:
                cell.problems.append(f"a step changed only {moved:.3f} of Θ_FO (< {MOVED_MIN})")
        elif "fo_changed_fraction_min" in summary and cell.precision != "fp32":   # Hi-ZFO with an empty Θ_FO
            cell.problems.append("no Θ_FO step to check (the selection chose no first-order tensor)")
        if cell.name == "mezo/bf16+lr0":
            reference = records.get("zero_shot/bf16", {})
            if reference.get("status") != "ok":
                cell.problems.append("no ok zero_shot/bf16 record to compare the weights with")
            else:
                same = record.get("final_params_sha256") == reference.get("final_params_sha256")
                cell.facts["weights_bit_identical"] = same
                if not same:
                    cell.problems.append("lr 0 changed the bf16 weights (final_params_sha256 differs from the "
                                         "untrained model's)")
    cell.status = "failed" if cell.problems else "ok"


def _override(cell: Cell, key: str, default: Any) -> Any:
    for item in cell.overrides:
        if item.startswith(key + "="):
            return item.split("=", 1)[1]
    return default


def verdict(cell: Cell) -> str:
    if cell.status == "skipped":
        return f"cell {cell.name}: skipped (out of time)"
    if cell.status == "failed":
        tag = " (injected, expected)" if cell.injected else ""
        return f"cell {cell.name}: FAILED{tag}: {'; '.join(cell.problems)}"
    f = cell.facts
    parts = [f"{f.get('steps', 0)} steps"]
    if f.get("final_loss") is not None:
        parts.append(f"loss {f['final_loss']:.3f}")
    if f.get("step_s") is not None:
        parts.append(f"{f['step_s']:.3f} s/step")
    if f.get("peak_gb") is not None:
        parts.append(f"peak {f['peak_gb']:.2f} GiB")
    if f.get("fo_changed_min") is not None:
        parts.append(f"Θ_FO changed >= {f['fo_changed_min']:.3f} per step")
    if "weights_bit_identical" in f:
        parts.append("weights bit-identical")
    return f"cell {cell.name}: ok ({', '.join(parts)})"


# ---------------------------------------------------------------------------------------------------
# step 4: the costs, with benchmarks/harness.py


def harness_args(scale: Scale, precision: str) -> argparse.Namespace:
    """benchmarks/harness.py's own arguments for this scale and precision."""
    from benchmarks import harness
    parser = argparse.ArgumentParser()
    harness.add_arguments(parser, MEASURED_ROWS)
    return parser.parse_args([*scale.harness, "--precision", precision, "--device", scale.device,
                              "--steps", str(scale.timed_steps)])


def measure_precision(precision: str, scale: Scale) -> dict[str, dict[str, Any]]:
    """The harness rows at one precision, each on a fresh model, in this process (CUDA's peak counter is exact
    in-process; on CPU the peak is the resident set since a reset, which is all a smoke test needs)."""
    from benchmarks import harness
    args = harness_args(scale, precision)
    results: dict[str, dict[str, Any]] = {}
    for row in MEASURED_ROWS:
        try:
            results[row] = harness.measure(row, args, peak=True, timed=scale.timed_steps)
        except (RuntimeError, MemoryError) as exc:          # out of memory, a kernel missing for a dtype, ...
            results[row] = {"row": row, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        results[row].pop("fo_names", None)
        _release(scale.device)
    return results


def ratios(rows: dict[str, dict[str, Any]]) -> dict[str, Optional[float]]:
    """The summary's ratios at one precision (None where a row is missing or failed)."""
    ft, hz, mezo, fwd = (rows.get(k, {}) for k in ("full_ft", "hizfo", "mezo", "forward"))

    def div(a: dict, a_key: str, b: dict, b_key: str) -> Optional[float]:
        return a[a_key] / b[b_key] if a.get(a_key) is not None and b.get(b_key) else None

    return {"hizfo_step_over_fullft": div(hz, "step_s", ft, "step_s"),
            "hizfo_peak_over_fullft": div(hz, "peak_bytes", ft, "peak_bytes"),
            "profiling_over_fullft_step": div(hz, "profiling_s", ft, "step_s"),
            "profiling_peak_over_step": div(hz, "setup_peak_bytes", hz, "step_peak_bytes"),
            "mezo_peak_over_forward": div(mezo, "peak_bytes", fwd, "peak_bytes")}


# the paper-shape targets the GPU table is read against (informational: they do not fail a cell)
TARGETS = {"hizfo_peak_over_fullft": ("<=", 0.35), "profiling_over_fullft_step": ("<=", 3.0),
           "hizfo_step_over_fullft": ("<=", 1.10)}


def _release(device: str) -> None:
    """Free the last cell's model before the next one is built (CUDA only: on CPU the tiny models are small and a
    full collection costs ~0.3 s a cell)."""
    if device == "cuda":
        import torch
        gc.collect()
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------
# step 5: the outputs


def summary_line(cells: list[Cell], measured: dict[str, dict[str, Optional[float]]]) -> str:
    ran = [c for c in cells if c.status in ("ok", "failed")]
    ok = sum(c.status == "ok" for c in ran)
    parts = [f"gpu_check: cells_ok={ok}/{len(ran)}"]
    skipped = sum(c.status == "skipped" for c in cells)
    if skipped:
        parts.append(f"skipped={skipped}")
    for key in ("hizfo_step_over_fullft", "hizfo_peak_over_fullft", "profiling_over_fullft_step",
                "profiling_peak_over_step", "mezo_peak_over_forward"):
        values = [f"{p}:{measured[p][key]:.2f}" if measured[p].get(key) is not None else f"{p}:nan"
                  for p in PRECISIONS if p in measured]
        parts.append(f"{key}={','.join(values) or 'nan'}")
    return " ".join(parts)


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# gpu_check {report['finished']}", "", f"{report['machine']}; {report['shape']}", "",
             "| cell | verdict | steps | final loss | s/step | peak (GiB) | notes |", "|---|---|---|---|---|---|---|"]
    for c in report["cells"]:
        f = c["facts"]

        def num(key: str, fmt: str) -> str:
            return format(f[key], fmt) if f.get(key) is not None else "–"
        notes = "; ".join(c["problems"]) or ("bit-identical" if f.get("weights_bit_identical") else "")
        if f.get("fo_changed_min") is not None:
            notes = (notes + "; " if notes else "") + f"Θ_FO changed ≥ {f['fo_changed_min']:.3f}/step"
        lines.append(f"| {c['name']}{' (injected)' if c['injected'] else ''} | {c['status']} | {num('steps', 'd')} | "
                     f"{num('final_loss', '.3f')} | {num('step_s', '.3f')} | {num('peak_gb', '.2f')} | {notes} |")
    if report["ratios"]:
        lines += ["", "Costs at " + report["measure_shape"] + ", ratios to Full FT at the same precision "
                  "(benchmarks/harness.py rows, one process):", "",
                  "| precision | Hi-ZFO step / Full FT | Hi-ZFO peak / Full FT | profiling / Full FT step | "
                  "profiling peak / step peak | MeZO peak / forward |", "|---|---|---|---|---|---|"]
        for precision, r in report["ratios"].items():
            cols = [f"{r[k]:.2f}" if r.get(k) is not None else "–" for k in
                    ("hizfo_step_over_fullft", "hizfo_peak_over_fullft", "profiling_over_fullft_step",
                     "profiling_peak_over_step", "mezo_peak_over_forward")]
            lines.append(f"| {precision} | " + " | ".join(cols) + " |")
        lines += ["", "Targets at the paper's shape (read, not enforced): " +
                  ", ".join(f"{k} {op} {v:g}" for k, (op, v) in TARGETS.items()) + "."]
    if report["dropped"]:
        lines += ["", f"Dropped under --minutes {report['minutes']:g}: {', '.join(report['dropped'])}"]
    lines += ["", "    " + report["summary"], ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------


def parse(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "outputs" / "gpu_check"), help="folder for the JSON, Markdown "
                        "and the cells' records (default outputs/gpu_check)")
    parser.add_argument("--minutes", type=float, default=8.0,
                        help="time budget; below the whole matrix's estimate the non-core cells and measurements "
                             "are dropped first (listed), and no cell starts after the deadline")
    parser.add_argument("--cpu-smoke", action="store_true", help="no GPU: the same matrix at a tiny shape on CPU")
    parser.add_argument("--methods", help="comma-separated method configs to run (default: all of conf/method)")
    parser.add_argument("--no-measure", action="store_true", help="skip the cost measurements")
    parser.add_argument("--inject-failure", action="store_true",
                        help=f"self-test: add a Full FT cell at lr {INJECTED_LR:g} that must be reported as failed")
    parser.add_argument("--wheelhouse", default=str(ROOT / "wheelhouse"))
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse(argv)
    say("gpu_check: every training method and control x precision {fp32, bf16-mixed, bf16} through run.py on "
        f"task=toy ({STEPS} steps each), zero-shot per precision, bf16 MeZO at lr 0;")
    say("gpu_check: checks: record ok, loss finite, MeZO lr 0 weights bit-identical, bf16(-mixed) Hi-ZFO "
        f"changes >= {MOVED_MIN:.0%} of Θ_FO per step; measures step/peak/profiling ratios to Full FT")
    try:
        all_methods = method_names()
        methods = all_methods if not args.methods else [m for m in args.methods.split(",") if m]
        unknown = sorted(set(methods) - set(all_methods))
        if unknown:
            raise BadInput(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(all_methods)}")
        if not args.minutes > 0:
            raise BadInput(f"--minutes: must be > 0, got {args.minutes:g}")
        scale = CPU_SMOKE if args.cpu_smoke else GPU
        cells, measured_precisions, dropped = plan(build_cells(methods, args.inject_failure), scale, args.minutes)
        if args.no_measure:
            measured_precisions = []
        if importlib.util.find_spec("torch") is None:
            raise BadInput(f"torch is not installed for {sys.executable} (the check expects a PyTorch image; "
                           f"set PYTHON= to the interpreter that has it)")
        import torch
        if not args.cpu_smoke and not torch.cuda.is_available():
            raise BadInput("no CUDA device on this machine (torch.cuda.is_available() is False); "
                           "pass --cpu-smoke to run the matrix at a tiny shape on CPU")
        still_missing = install_missing(Path(args.wheelhouse))
        if still_missing:
            raise BadInput(f"could not install {', '.join(still_missing)} (not in {args.wheelhouse}; build it with "
                           f"scripts/make_wheelhouse.sh on a machine with a network)")
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if dropped:
        say(f"gpu_check: dropped under --minutes {args.minutes:g}: {', '.join(dropped)}")
    return run_all(args, scale, cells, measured_precisions, dropped)


def run_all(args: argparse.Namespace, scale: Scale, cells: list[Cell], measured_precisions: list[str],
            dropped: list[str]) -> int:
    import torch

    from benchmarks.harness import device_name
    from hizfo.registry import register_schemas
    register_schemas()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    deadline = time.monotonic() + args.minutes * 60 - scale.start_s
    if args.cpu_smoke:
        torch.set_num_threads(1)
        # the smoke checks that the bf16 paths run and keep their numerics, which emulated bf16 does too
        os.environ.setdefault("HIZFO_ALLOW_EMULATED_BF16", "1")
    records: dict[str, dict] = {}
    model = save_random_weights(scale, out)
    for cell in cells:
        if time.monotonic() > deadline:
            cell.status = "skipped"
            say(verdict(cell))
            continue
        start = time.monotonic()
        record = run_cell(cell, scale, out, model)
        cell.seconds = time.monotonic() - start
        records[cell.name] = record
        judge(cell, record, records)
        _release(scale.device)
        say(verdict(cell))
    ratio_rows: dict[str, dict[str, Optional[float]]] = {}
    raw: dict[str, Any] = {}
    for precision in measured_precisions:
        if time.monotonic() > deadline:
            dropped.append(f"measurements/{precision} (out of time)")
            continue
        raw[precision] = measure_precision(precision, scale)
        ratio_rows[precision] = ratios(raw[precision])
        errors = [f"{row}: {r['error']}" for row, r in raw[precision].items() if "error" in r]
        say(f"measured {precision}: " + (", ".join(f"{k}={v:.2f}" for k, v in ratio_rows[precision].items()
                                                    if v is not None) or "nothing") +
            (f" (errors: {'; '.join(errors)})" if errors else ""))
    summary = summary_line(cells, ratio_rows)
    from benchmarks import harness
    report = {"started": started, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": device_name(scale.device), "device": scale.device, "cpu_smoke": args.cpu_smoke,
              "shape": f"model={scale.model} (random init, saved once)", "minutes": args.minutes, "steps_per_cell": STEPS,
              "measure_shape": harness.describe(harness_args(scale, "fp32")).replace("precision=fp32, ", ""),
              "cells": [asdict(c) for c in cells], "ratios": ratio_rows, "measurements": raw,
              "dropped": dropped, "summary": summary,
              "ok": all(c.status != "failed" for c in cells)}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "gpu_check.md").write_text(markdown(report))
    say(f"gpu_check: wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    say(summary)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
