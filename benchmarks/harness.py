"""What benchmarks/step_cost.py and benchmarks/step_cost_baselines.py share: model shapes, one row's measurement,
the table, and the summary line.

A row is one method (or a plain forward) on a random-init model of the given shape, one fixed batch:
  * time: median seconds of the timed steps after a warm-up step, all rows in one process, so every ratio to
    Full FT comes from the same process: one row after another (each on a fresh model, freed before the next),
    or with ``--rounds R`` round-robin, one step per row per round, every row's model held at once;
  * peak: a fresh subprocess per row, with glibc's mmap threshold fixed so freed tensors go back to the OS and the
    resident peak follows live tensors (hizfo.run.meters: VmHWM after clear_refs on CPU, max_memory_allocated on
    CUDA), reset once the model and batch exist, so set-up (profiling, optimizers, adapters) counts. The fixed
    threshold slows allocation-heavy steps (page faults), which is why the time comes from the other process.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

ROOT = Path(__file__).resolve().parent.parent

from hizfo.core.device import synchronize
from hizfo.run.meters import Meters
from hizfo.core.precision import PRECISIONS, check_precision, use_precision, weight_dtype

# the real models' shapes (random init: the benchmarks measure cost, not quality)
SHAPES: dict[str, dict[str, Any]] = {
    "opt-125m": dict(family="opt", layers=12, hidden=768, ffn=3072, heads=12, vocab=50272),
    "opt-1.3b": dict(family="opt", layers=24, hidden=2048, ffn=8192, heads=32, vocab=50272),
    "qwen2-0.5b": dict(family="qwen2", layers=24, hidden=896, ffn=4864, heads=14, kv_heads=2, vocab=151936),
}
MEZO_LR, MEZO_EPS = 1e-6, 1e-3
_PEAK_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "TQDM_DISABLE": "1"}


def add_arguments(parser: argparse.ArgumentParser, rows: tuple[str, ...]) -> None:
    parser.add_argument("--shape", default="opt-125m", choices=sorted(SHAPES))
    parser.add_argument("--layers", type=int, help="override the shape's number of blocks")
    parser.add_argument("--hidden", type=int, help="override the shape's hidden size")
    parser.add_argument("--ffn", type=int, help="override the shape's feed-forward size")
    parser.add_argument("--vocab", type=int, help="override the shape's vocabulary size")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--batch", type=int, default=4, help="sequences per batch")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per sequence (the second half carries the loss)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row (after one warm-up step)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", default=",".join(rows), help="comma-separated rows to run")
    parser.add_argument("--rounds", type=int, default=1,
                        help="> 1: hold every row's model at once and time them round-robin, one step each per round "
                             "(robust to load drift; needs every row's memory at once)")
    parser.add_argument("--no-peak", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--json", help="also write the raw numbers to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)


def shape_of(args: argparse.Namespace) -> dict[str, Any]:
    shape = dict(SHAPES[args.shape])
    for key in ("layers", "hidden", "ffn", "vocab"):
        if getattr(args, key, None) is not None:
            shape[key] = getattr(args, key)
    if args.hidden is not None and shape["hidden"] % shape["heads"]:
        shape["heads"] = max(h for h in range(1, 65) if shape["hidden"] % h == 0 and shape["hidden"] // h >= 32)
        shape.pop("kv_heads", None)
    return shape


def describe(args: argparse.Namespace) -> str:
    s = shape_of(args)
    return (f"{args.shape}-shaped ({s['layers']} blocks, hidden {s['hidden']}, ffn {s['ffn']}, vocab {s['vocab']}), "
            f"batch {args.batch} x {args.tokens} tokens, precision={args.precision}, {device_name(args.device)}")


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    cpu = "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}"


def build_model(args: argparse.Namespace):
    """A random-init model of the shape, in the precision's weight dtype, on the device.

    Built on the device itself (``torch.device`` as the default): a CPU initialises OPT-1.3B's 1.3 G weights in
    ~10 s, a GPU in well under one; the values differ between devices, which a cost measurement does not mind."""
    s = shape_of(args)
    torch.manual_seed(0)
    with torch.device(args.device):
        model = _random_model(s)
    model.config.pad_token_id = 1
    return model.to(dtype=weight_dtype(args.precision)).eval()


def _random_model(s: dict[str, Any]):
    if s["family"] == "opt":
        from transformers import OPTConfig, OPTForCausalLM
        config = OPTConfig(vocab_size=s["vocab"], hidden_size=s["hidden"], num_hidden_layers=s["layers"],
                           ffn_dim=s["ffn"], num_attention_heads=s["heads"], word_embed_proj_dim=s["hidden"],
                           max_position_embeddings=2048, dropout=0.0, attention_dropout=0.0)
        return OPTForCausalLM(config)
    from transformers import Qwen2Config, Qwen2ForCausalLM
    config = Qwen2Config(vocab_size=s["vocab"], hidden_size=s["hidden"], num_hidden_layers=s["layers"],
                         intermediate_size=s["ffn"], num_attention_heads=s["heads"],
                         num_key_value_heads=s.get("kv_heads", s["heads"]), tie_word_embeddings=True,
                         max_position_embeddings=4096)
    return Qwen2ForCausalLM(config)


def make_batch(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    vocab = shape_of(args)["vocab"]
    ids = torch.randint(4, vocab - 1, (args.batch, args.tokens), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, : args.tokens // 2] = -100                 # the prompt half carries no loss
    device = torch.device(args.device)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device)}


def context(model, batch: dict[str, torch.Tensor], device: torch.device, family: str):
    from hizfo.core.methods import TrainContext
    from hizfo.core.models import LoadedModel

    def endless() -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield batch

    loaded = LoadedModel(model=model, tokenizer=None, name="shaped", family=family,
                         lora_target_modules=["q_proj", "v_proj"])
    return TrainContext(loaded=loaded, task=None, device=device, total_steps=1000, steps_per_epoch=1000,
                        zo_seeds=torch.Generator().manual_seed(0), train_batches=endless, dev_batches=endless)


def build_method(name: str):
    """A method with its config defaults (conf/method/<name>.yaml sets no values of its own)."""
    from hizfo.registry import implementation
    return implementation(name)()


def mezo_reference_step(model, params, batch, seed: int, lr: float, eps: float) -> None:
    """MeZO's reference step pattern: reseed, four allocating torch.normal draws per step, out-of-place adds."""

    def perturb(scale: float) -> None:
        torch.manual_seed(seed)
        for _, p in params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
            p.data = p.data + scale * z * eps

    def loss() -> float:
        with torch.inference_mode():
            return float(model(**batch).loss)

    perturb(1.0)
    loss_plus = loss()
    perturb(-2.0)
    loss_minus = loss()
    projected_grad = (loss_plus - loss_minus) / (2 * eps)
    perturb(1.0)
    torch.manual_seed(seed)
    for _, p in params:
        z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
        p.data = p.data - lr * projected_grad * z


sync = synchronize            # hizfo.core.device: wait for CUDA's queued work around every timer


def prepare(row: str, args: argparse.Namespace, meters: Optional[Meters] = None) -> tuple[Callable[[], tuple], dict]:
    """A fresh model and batch, the row's method set up on them; returns (one step, the row's facts so far).

    With ``meters``, the peak is reset once the model and batch exist (set-up counts), and for Hi-ZFO set-up's
    own peak is read and the peak reset again, so the steps' peak comes apart from profiling's.
    """
    from hizfo.core.methods import causal_lm_loss, unique_named_parameters
    device = torch.device(args.device)
    model = build_model(args)
    batch = make_batch(args)
    out: dict[str, Any] = {"row": row}
    if meters is not None:
        gc.collect()
        _trim()
        meters.reset_peak(device)
    if row == "forward":
        def step() -> tuple:
            with torch.inference_mode():
                causal_lm_loss(model, batch)
            return 1, 0
    elif row == "profiling":                 # Hi-ZFO's stage-one profiling alone (it restores the weights: repeatable)
        from hizfo.core.profiling import tensor_importance
        named = list(unique_named_parameters(model))

        def step() -> tuple:
            tensor_importance(model, named, batch, 2e-5, 0.0)
            return 2, 2
    elif row == "mezo_reference":
        params = list(unique_named_parameters(model))
        seeds = iter(range(10 ** 6))

        def step() -> tuple:
            mezo_reference_step(model, params, batch, next(seeds), MEZO_LR, MEZO_EPS)
            return 2, 0
    else:
        method = build_method(row)
        start = time.perf_counter()
        method.setup(context(model, batch, device, shape_of(args)["family"]))
        method.on_epoch_start(0)                  # GreenTrainer selects here (its profiling counts in set-up)
        sync(device)
        out["setup_s"] = time.perf_counter() - start
        part = getattr(method, "partition", None)
        if part is not None and row == "hizfo":
            out.update(profiling_s=part.profiling_seconds, fo_params=sum(part.numel[n] for n in part.fo),
                       fo_tensors=len(part.fo), backward_flops_share=part.backward_flops_share,
                       fo_names=list(part.fo))
            if meters is not None:                # set-up's own peak, then the steps' from a fresh reset
                out["setup_peak_bytes"] = meters.read_peak(device)
                gc.collect()
                _trim()
                meters.reset_peak(device)
        model.train(bool(getattr(method.cfg, "dropout", False)))

        def step() -> tuple:
            result = method.train_step(batch)
            return result.n_forward, result.n_backward
    return step, out


def timed_step(step: Callable[[], tuple], device: torch.device) -> tuple[float, tuple]:
    sync(device)
    start = time.perf_counter()
    counts = step()
    sync(device)
    return time.perf_counter() - start, counts


def measure(row: str, args: argparse.Namespace, peak: bool, timed: Optional[int] = None) -> dict[str, Any]:
    """One row on a fresh model: median step seconds (one warm-up step: AdamW creates its state there), and
    (``peak``) the peak memory from set-up on.

    ``timed``: how many steps to time after the warm-up; by default ``args.steps``, or 1 with ``peak`` (on CPU the
    peak subprocess's fixed mmap threshold slows the steps; CUDA's allocator counter has no such cost, so a CUDA
    caller may time and read the peak in one go: benchmarks/gpu_check.py)."""
    device = torch.device(args.device)
    meters = Meters() if peak else None
    n_timed = timed if timed is not None else (1 if peak else args.steps)
    with use_precision(args.precision):
        step, out = prepare(row, args, meters)
        times = []
        for i in range(1 + n_timed):
            seconds, counts = timed_step(step, device)
            if i:
                times.append(seconds)
    out.update(step_s=statistics.median(times), all_s=times, n_forward=counts[0], n_backward=counts[1])
    if meters is not None:
        out["step_peak_bytes"] = meters.read_peak(device)
        out["peak_bytes"] = max(out["step_peak_bytes"], out.get("setup_peak_bytes", 0))
        out["memory_kind"] = meters.memory_kind
    return out


def measure_interleaved(rows: list[str], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Every row set up on its own model at once, then ``--rounds`` rounds of one step per row, the order rotating
    each round: load drift on a shared machine then hits every row alike."""
    device = torch.device(args.device)
    with use_precision(args.precision):
        prepared = {row: prepare(row, args) for row in rows}
        for step, _ in prepared.values():
            timed_step(step, device)                                  # warm-up
        times: dict[str, list[float]] = {row: [] for row in rows}
        for r in range(args.rounds):
            for row in rows[r % len(rows):] + rows[:r % len(rows)]:
                seconds, counts = timed_step(prepared[row][0], device)
                times[row].append(seconds)
                prepared[row][1].update(n_forward=counts[0], n_backward=counts[1])
    return {row: {**prepared[row][1], "step_s": statistics.median(times[row]), "all_s": times[row]} for row in rows}


def _trim() -> None:
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _argv(args: argparse.Namespace, row: str) -> list[str]:
    argv = ["--one", row, "--shape", args.shape, "--precision", args.precision, "--batch", str(args.batch),
            "--tokens", str(args.tokens), "--steps", str(args.steps), "--device", args.device]
    for key in ("layers", "hidden", "ffn", "vocab"):
        if getattr(args, key, None) is not None:
            argv += [f"--{key}", str(getattr(args, key))]
    return argv


def peak_in_subprocess(script: str, args: argparse.Namespace, row: str) -> dict[str, Any]:
    module = f"benchmarks.{Path(script).stem}"              # as ``python -m benchmarks.<name>`` from the root
    out = subprocess.run([sys.executable, "-m", module, *_argv(args, row)], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, **_PEAK_ENV})
    if out.returncode != 0:
        return {"row": row, "error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(script: str, args: argparse.Namespace, rows: list[str]) -> dict[str, dict[str, Any]]:
    """Time every row in this process, then (unless --no-peak) measure each row's peak in a subprocess."""
    check_precision(args.precision, torch.device(args.device))
    results: dict[str, dict[str, Any]] = {}
    if args.rounds > 1:
        results = measure_interleaved(rows, args)
        for row, r in results.items():
            print(f"  {row}: {r['step_s']:.3f} s/step (median of {args.rounds} interleaved)", file=sys.stderr)
    for row in [] if args.rounds > 1 else rows:
        try:
            results[row] = measure(row, args, peak=False)
        except (RuntimeError, MemoryError) as exc:           # e.g. out of memory at a large shape
            results[row] = {"row": row, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        gc.collect()
        _trim()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        r = results[row]
        print(f"  {row}: " + (f"{r['step_s']:.3f} s/step" if "step_s" in r else r["error"]), file=sys.stderr, flush=True)
    if not args.no_peak:
        for row in rows:
            if "error" in results[row]:
                continue
            peak = peak_in_subprocess(script, args, row)
            if "error" in peak:
                results[row]["peak_error"] = peak["error"]
                continue
            for key in ("peak_bytes", "setup_peak_bytes", "step_peak_bytes", "memory_kind"):
                if key in peak:
                    results[row][key] = peak[key]
            print(f"  {row}: peak {peak['peak_bytes'] / 2**30:.2f} GiB", file=sys.stderr, flush=True)
    return results


def one_row_main(args: argparse.Namespace) -> None:
    print(json.dumps(measure(args.one, args, peak=True)))


LABELS = {"forward": "forward (inference only)", "full_ft": "Full FT (AdamW)", "hizfo": "Hi-ZFO (rho 0.6, alpha 0.1)",
          "profiling": "Hi-ZFO profiling (eq. 7), alone", "mezo": "MeZO (ours)", "mezo_reference": "MeZO reference pattern", "ft_top2": "FT-Top2",
          "greentrainer": "GreenTrainer GT-0.7", "lora": "LoRA (r 8, q/v)", "prefix": "Prefix (20 tokens)",
          "bilevel_zofo": "Bilevel-ZOFO (K = 10)"}


def table(results: dict[str, dict[str, Any]]) -> str:
    """One Markdown table: every row's step and peak, as ratios to Full FT's (and MeZO's peak to a forward's)."""
    ft, fwd = results.get("full_ft", {}), results.get("forward", {})
    lines = ["| row | fwd/bwd per step | step (s) | step / Full FT | peak (GiB) | peak / Full FT | peak / forward's |",
             "|---|---|---|---|---|---|---|"]

    def ratio(r: dict, f: dict, key: str) -> str:
        return f"{r[key] / f[key]:.2f}" if key in r and key in f and f[key] else "–"

    for row, r in results.items():
        if "error" in r:
            lines.append(f"| {LABELS.get(row, row)} | – | {r['error']} | – | – | – | – |")
            continue
        peak = f"{r['peak_bytes'] / 2**30:.2f}" if "peak_bytes" in r else r.get("peak_error", "–")
        lines.append(f"| {LABELS.get(row, row)} | {r['n_forward']}/{r['n_backward']} | {r['step_s']:.3f} | "
                     f"{ratio(r, ft, 'step_s')} | {peak} | {ratio(r, ft, 'peak_bytes')} | "
                     f"{ratio(r, fwd, 'peak_bytes')} |")
    return "\n".join(lines)


def notes(results: dict[str, dict[str, Any]]) -> list[str]:
    """The lines under the table: MeZO against a forward, Hi-ZFO's profiling, and the summary line (last)."""
    ft, hz, mezo, fwd = (results.get(k, {}) for k in ("full_ft", "hizfo", "mezo", "forward"))
    out = []
    if "peak_bytes" in mezo and "peak_bytes" in fwd:
        out.append(f"MeZO peak / inference-only forward's peak: {mezo['peak_bytes'] / fwd['peak_bytes']:.2f}")
    if "step_s" in mezo and "step_s" in fwd:
        out.append(f"MeZO step / its two forwards: {mezo['step_s'] / (2 * fwd['step_s']):.2f}")
    prof = results.get("profiling", {})
    if "step_s" in prof and "step_s" in ft:
        out.append(f"profiling (its own row, timed like a step) / Full FT step: {prof['step_s'] / ft['step_s']:.2f}")
    if "peak_bytes" in prof and "step_peak_bytes" in hz:
        out.append(f"profiling's peak / Hi-ZFO training steps' peak: {prof['peak_bytes'] / hz['step_peak_bytes']:.2f}")
    if "profiling_s" in hz:
        line = (f"Hi-ZFO profiling in its set-up: {hz['profiling_s']:.2f} s; Θ_FO {hz['fo_tensors']} tensors, "
                f"{hz['fo_params'] / 1e6:.1f} M parameters, backward FLOPs share {hz['backward_flops_share']:.2f}")
        if "setup_peak_bytes" in hz and "step_peak_bytes" in hz:
            line += (f"; set-up (profiling) peak {hz['setup_peak_bytes'] / 2**30:.2f} GiB vs the training steps' "
                     f"{hz['step_peak_bytes'] / 2**30:.2f} GiB")
        out.append(line)

    def fmt(num: dict, key: str, den: dict, den_key: str) -> str:
        return f"{num[key] / den[den_key]:.2f}" if key in num and den_key in den else "nan"

    profiling = (prof, "step_s") if "step_s" in prof else (hz, "profiling_s")
    out.append(f"hizfo_step_over_fullft={fmt(hz, 'step_s', ft, 'step_s')} "
               f"profiling_over_fullft_step={fmt(profiling[0], profiling[1], ft, 'step_s')} "
               f"hizfo_peak_over_fullft={fmt(hz, 'peak_bytes', ft, 'peak_bytes')}")
    return out


def write_json(path: Optional[str], args: argparse.Namespace, results: dict) -> None:
    if path:
        Path(path).write_text(json.dumps({"machine": device_name(args.device), "args": vars(args),
                                          "results": results}, indent=2))


def main_for(script: str, doc: str, rows: tuple[str, ...],
             extra: Optional[Callable[[argparse.Namespace, dict[str, dict[str, Any]]], list[str]]] = None) -> None:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    add_arguments(parser, rows)
    args = parser.parse_args()
    if args.one:
        one_row_main(args)
        return
    selected = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(selected) - set(rows))
    if unknown:
        parser.error(f"--rows: unknown {unknown}; choose from {', '.join(rows)}")
    results = run(script, args, selected)
    write_json(args.json, args, results)           # before the extras: they may fail where the rows did not
    print(f"\n{describe(args)}\n")
    print(table(results))
    lines = notes(results)
    if extra is not None:
        lines = lines[:-1] + extra(args, results) + lines[-1:]
    print()
    for line in lines:
        print(line)
