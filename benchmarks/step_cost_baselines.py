"""Step cost of the baselines on an OPT-125M-shaped random model (batch 4 × 128), one row per fresh subprocess.

    python benchmarks/step_cost_baselines.py                 # every row, prints the table
    python benchmarks/step_cost_baselines.py --rows forward,mezo --device cuda

Rows:
  forward         one inference-only forward (eval, inference mode): the memory and time yardstick
  mezo_reference  MeZO's reference step pattern: torch.manual_seed(s), then four allocating torch.normal draws
                  per step (+ε, −2ε, restore +ε, update), each applied as p.data = p.data + scale·z
  mezo            baselines.mezo.MeZO.train_step (three in-place draws through hizfo.zo.perturb_)
  full_ft         baselines.full_ft.FullFT.train_step (AdamW on every tensor)
  lora, prefix    baselines.lora / baselines.prefix (peft adapters, AdamW)
  bilevel_zofo    baselines.bilevel_zofo (K lower steps + 6 forwards + 2 backwards + dense upper AdamW over θ)

Each row runs in its own process so that its peak resident memory (Linux VmHWM after ``echo 5 >
/proc/self/clear_refs``, reset once the model and batch exist) is its own; on CUDA the peak is
``torch.cuda.max_memory_allocated``. Time is the median over the timed steps after warm-up steps.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OPT_125M_SHAPE = dict(vocab_size=50272, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072,
                      word_embed_proj_dim=768, max_position_embeddings=2048, do_layer_norm_before=True,
                      dropout=0.1, attention_dropout=0.0)
ROWS = ("forward", "mezo_reference", "mezo", "full_ft", "lora", "prefix", "bilevel_zofo")
# (warm-up steps, timed steps) per row: Bilevel-ZOFO's outer step holds K = 10 lower steps
STEPS = {"forward": (1, 5), "mezo_reference": (1, 3), "mezo": (1, 3), "full_ft": (1, 3), "lora": (1, 3),
         "prefix": (1, 3), "bilevel_zofo": (1, 2)}
MEZO_LR, MEZO_EPS = 1e-6, 1e-3


# ---------------------------------------------------------------------------------------------------
# peak memory


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")


def read_peak(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------
# the model, the batch, a context the methods accept


def opt_125m_shaped(device: torch.device, dtype: torch.dtype):
    from transformers import OPTConfig, OPTForCausalLM
    torch.manual_seed(0)
    model = OPTForCausalLM(OPTConfig(**OPT_125M_SHAPE)).to(device=device, dtype=dtype)
    model.config.pad_token_id = 1
    return model


def fixed_batch(device: torch.device, batch: int = 4, tokens: int = 128) -> dict[str, torch.Tensor]:
    ids = torch.randint(4, OPT_125M_SHAPE["vocab_size"], (batch, tokens), generator=torch.Generator().manual_seed(1))
    ids = ids.to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def context(model, batch: dict[str, torch.Tensor], device: torch.device):
    from hizfo.methods import TrainContext
    from hizfo.models import LoadedModel

    def endless() -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield batch

    loaded = LoadedModel(model=model, tokenizer=None, name="opt-125m-shaped", family="opt",
                         lora_target_modules=["q_proj", "v_proj"])
    return TrainContext(loaded=loaded, task=None, device=device, total_steps=1000, steps_per_epoch=1000,
                        zo_seeds=torch.Generator().manual_seed(0), train_batches=endless, dev_batches=endless)


def build_method(name: str):
    """A method with its conf/method yaml's values (rates do not change the cost)."""
    from omegaconf import OmegaConf
    import baselines  # noqa: F401  (registers the schemas)
    from hydra.utils import instantiate
    cfg = OmegaConf.load(ROOT / "conf" / "method" / f"{name}.yaml")
    cfg.pop("defaults", None)
    schema = {"mezo": "baselines.mezo.MeZO", "full_ft": "baselines.full_ft.FullFT", "lora": "baselines.lora.LoRA",
              "prefix": "baselines.prefix.PrefixTuning", "bilevel_zofo": "baselines.bilevel_zofo.BilevelZOFO"}[name]
    cfg["_target_"] = schema
    cfg["name"] = name
    return instantiate(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), _convert_="all")


# ---------------------------------------------------------------------------------------------------
# MeZO's reference step pattern (written from the paper's Algorithm 1 and the notes' description)


def mezo_reference_step(model, params: list[tuple[str, torch.Tensor]], batch, seed: int, lr: float, eps: float,
                        weight_decay: float = 0.0) -> float:
    """Reseed the global RNG, draw z with torch.normal per tensor (a new tensor each time), add out of place."""

    def perturb(scale: float) -> None:
        torch.manual_seed(seed)
        for _, p in params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
            p.data = p.data + scale * z * eps

    def loss() -> float:
        with torch.inference_mode():
            model.eval()
            return float(model(**batch).loss)

    perturb(1.0)
    loss_plus = loss()
    perturb(-2.0)
    loss_minus = loss()
    projected_grad = (loss_plus - loss_minus) / (2 * eps)
    perturb(1.0)                                                     # restore: draw 3
    torch.manual_seed(seed)                                          # update: draw 4
    for name, p in params:
        z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
        if "bias" in name or "layer_norm" in name:
            p.data = p.data - lr * (projected_grad * z)
        else:
            p.data = p.data - lr * (projected_grad * z + weight_decay * p.data)
    return loss_plus


# ---------------------------------------------------------------------------------------------------
# one row, in this process


def measure(row: str, device: torch.device, dtype: torch.dtype, scale: int = 1, batch_size: int = 4,
            tokens: int = 128) -> dict[str, Any]:
    model = opt_125m_shaped(device, dtype)
    batch = fixed_batch(device, batch_size, tokens)
    warm, timed = (n * scale for n in STEPS[row])
    step: Callable[[], Any]
    n_fwd = n_bwd = 0
    if row == "forward":
        model.eval()

        def step() -> None:
            with torch.inference_mode():
                model(**batch)
        n_fwd = 1
    elif row == "mezo_reference":
        from hizfo.methods import unique_named_parameters
        params = [(n, p) for n, p in unique_named_parameters(model)]
        seeds = iter(range(10**6))

        def step() -> None:
            mezo_reference_step(model, params, batch, next(seeds), MEZO_LR, MEZO_EPS)
        n_fwd = 2
    else:
        method = build_method(row)
        ctx = context(model, batch, device)
        reset_peak(device)          # set-up (adapter injection, optimizer creation) is part of the row's peak
        method.setup(ctx)
        model.train(bool(method.cfg.dropout))
        counts: dict[str, int] = {}

        def step() -> None:
            result = method.train_step(batch)
            counts["f"], counts["b"] = result.n_forward, result.n_backward
    if row in ("forward", "mezo_reference"):
        reset_peak(device)
    times = []
    for i in range(warm + timed):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        if i >= warm:
            times.append(time.perf_counter() - start)
    if row not in ("forward", "mezo_reference"):
        n_fwd, n_bwd = counts["f"], counts["b"]
    return {"row": row, "step_s": statistics.median(times), "all_s": times, "peak_bytes": read_peak(device),
            "n_forward": n_fwd, "n_backward": n_bwd, "device": str(device), "threads": torch.get_num_threads()}


def interleaved_mezo_timing(device: torch.device, dtype: torch.dtype, rounds: int, batch_size: int = 4,
                            tokens: int = 128) -> dict[str, list[float]]:
    """Forward, reference step and our MeZO step timed round-robin on one model in this process.

    On a shared box the load drifts over minutes; alternating the three (rotating their order every round)
    exposes them to the same load, so their ratios hold even when the absolute times do not.
    """
    model = opt_125m_shaped(device, dtype)
    batch = fixed_batch(device, batch_size, tokens)
    method = build_method("mezo")
    method.setup(context(model, batch, device))
    from hizfo.methods import unique_named_parameters
    params = [(n, p) for n, p in unique_named_parameters(model)]
    seeds = iter(range(10**6))
    model.eval()

    def forward() -> None:
        with torch.inference_mode():
            model(**batch)

    steps = {"forward": forward,
             "mezo_reference": lambda: mezo_reference_step(model, params, batch, next(seeds), MEZO_LR, MEZO_EPS),
             "mezo": lambda: method.train_step(batch)}
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds + 1):                      # round 0 warms up
        for name in names[r % 3:] + names[:r % 3]:
            sync(device)
            start = time.perf_counter()
            steps[name]()
            sync(device)
            if r:
                times[name].append(time.perf_counter() - start)
    return times


def run_row_in_subprocess(row: str, args: argparse.Namespace) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--one", row, "--device", args.device, "--dtype", args.dtype,
                          "--scale", str(args.scale), "--batch", str(args.batch), "--tokens", str(args.tokens)],
                         capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if out.returncode != 0:
        raise RuntimeError(f"row {row} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def table(results: dict[str, dict[str, Any]]) -> str:
    fwd = results.get("forward")
    ft = results.get("full_ft")
    lines = ["| row | step (s) | fwd/bwd per step | × its forwards | peak (GiB) | peak / forward's | "
             "step / Full FT | peak / Full FT |", "|---|---|---|---|---|---|---|---|"]
    for row in ROWS:
        r = results.get(row)
        if r is None:
            continue
        own_fwd = r["step_s"] / (r["n_forward"] * fwd["step_s"]) if fwd and r["n_forward"] else float("nan")
        mem_fwd = r["peak_bytes"] / fwd["peak_bytes"] if fwd else float("nan")
        t_ft = r["step_s"] / ft["step_s"] if ft else float("nan")
        m_ft = r["peak_bytes"] / ft["peak_bytes"] if ft else float("nan")
        lines.append(f"| {row} | {r['step_s']:.3f} | {r['n_forward']}/{r['n_backward']} | {own_fwd:.2f} | "
                     f"{r['peak_bytes'] / 2**30:.2f} | {mem_fwd:.2f} | {t_ft:.2f} | {m_ft:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--scale", type=int, default=1, help="multiply every row's warm-up and timed steps")
    parser.add_argument("--batch", type=int, default=4, help="sequences per batch")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--interleave", type=int, default=0,
                        help="also time forward / reference / MeZO round-robin in this process for N rounds")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the raw numbers to this file")
    args = parser.parse_args()
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    if args.one:
        print(json.dumps(measure(args.one, torch.device(args.device), dtype, args.scale, args.batch, args.tokens)))
        return
    results = {}
    for row in [r for r in args.rows.split(",") if r]:
        results[row] = run_row_in_subprocess(row, args)
        print(f"{row}: {results[row]['step_s']:.3f} s/step, peak {results[row]['peak_bytes'] / 2**30:.2f} GiB",
              flush=True)
    if not results:
        print("no subprocess rows requested")
    print(f"\nOPT-125M-shaped random model, batch {args.batch} x {args.tokens}, {args.device} ({args.dtype}); "
          f"{machine()}\n")
    print(table(results))
    if "mezo" in results and "mezo_reference" in results:
        print(f"\nMeZO step / reference pattern's step: {results['mezo']['step_s'] / results['mezo_reference']['step_s']:.2f}"
              f"  (target <= 0.70)")
    if "mezo" in results and "forward" in results:
        print(f"MeZO peak / inference forward's peak: "
              f"{results['mezo']['peak_bytes'] / results['forward']['peak_bytes']:.2f}  (target <= 1.15)")
        print(f"MeZO step / its two forwards: {results['mezo']['step_s'] / (2 * results['forward']['step_s']):.2f}")
    if "mezo_reference" in results and "forward" in results:
        print(f"reference step / its two forwards: "
              f"{results['mezo_reference']['step_s'] / (2 * results['forward']['step_s']):.2f}")
    interleaved = {}
    if args.interleave:
        interleaved = interleaved_mezo_timing(torch.device(args.device), dtype, args.interleave, args.batch,
                                              args.tokens)
        med = {k: statistics.median(v) for k, v in interleaved.items()}
        print(f"\ninterleaved, {args.interleave} rounds (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in med.items()))
        ratios = [m / r for m, r in zip(interleaved["mezo"], interleaved["mezo_reference"])]
        print(f"  MeZO / reference: {med['mezo'] / med['mezo_reference']:.2f} (per round: "
              f"{', '.join(f'{x:.2f}' for x in ratios)})")
        print(f"  MeZO / its two forwards: {med['mezo'] / (2 * med['forward']):.2f}; "
              f"reference / its two forwards: {med['mezo_reference'] / (2 * med['forward']):.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "args": vars(args), "results": results,
                                               "interleaved": interleaved}, indent=2))


if __name__ == "__main__":
    main()
