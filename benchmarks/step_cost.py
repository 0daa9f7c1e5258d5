"""Step cost of Hi-ZFO vs Full FT on an OPT-125M-shaped random model, measured in one process.

    python benchmarks/step_cost.py [--steps 5] [--device cpu|cuda] [--dtype float32|bfloat16]

Prints, per method: median step time, peak memory, both as ratios to Full FT (and the step as a ratio to two
plain forward passes), and the cost model's predicted step ratio (MACs from hizfo.costs plus the measured cost
of the ZO noise passes). Peak memory is CUDA's max_memory_allocated on a GPU, peak RSS on CPU.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hizfo.meters import Meters  # noqa: E402
from hizfo.methods import TrainContext, causal_lm_loss, unique_named_parameters  # noqa: E402


def build_model(device: torch.device, dtype: torch.dtype, seed: int = 0):
    from transformers import AutoModelForCausalLM, OPTConfig
    torch.manual_seed(seed)
    config = OPTConfig(hidden_size=768, num_hidden_layers=12, ffn_dim=3072, num_attention_heads=12,
                       vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=768, dropout=0.0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(device=device, dtype=dtype)
    model.eval()
    return model


def make_batch(device: torch.device, batch: int, tokens: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 50000, (batch, tokens), generator=g)
    labels = ids.clone()
    labels[:, : tokens // 2] = -100
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, steps: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


class _Loaded:
    def __init__(self, model):
        self.model = model


def measure(name: str, make_method, device, dtype, batch, steps, warmup=1) -> dict:
    """Median step seconds and peak memory of one method, on a fresh model."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    model = build_model(device, dtype)
    meters = Meters()
    meters.reset_peak(device)
    method = make_method()
    stream = lambda: iter(lambda: batch, None)  # noqa: E731  endless stream of the same batch
    ctx = TrainContext(loaded=_Loaded(model), task=None, device=device, total_steps=1000, steps_per_epoch=1000,
                       zo_seeds=torch.Generator().manual_seed(0), train_batches=stream, dev_batches=stream)
    method.setup(ctx)
    for _ in range(warmup):
        method.train_step(batch)
    times = timed(lambda: method.train_step(batch), steps, device)
    peak = meters.read_peak(device)
    extra = {}
    if hasattr(method, "partition") and method.partition is not None:
        extra["partition"] = method.partition
        extra["zo_params"] = list(method.zo_params) if hasattr(method, "zo_params") else []
    result = {"name": name, "step": statistics.median(times), "peak": peak, "model": model, **extra}
    return result


def forward_seconds(device, dtype, batch, steps) -> float:
    model = build_model(device, dtype)
    with torch.inference_mode():
        times = timed(lambda: causal_lm_loss(model, batch), steps + 1, device)[1:]
    del model
    return statistics.median(times)


def adamw_seconds(params: list[torch.Tensor], device: torch.device, steps: int) -> float:
    """Median time of one AdamW step over ``params`` (a memory-bound pass that MAC counts do not see)."""
    if not params:
        return 0.0
    copies = [torch.zeros_like(p, requires_grad=True) for p in params]
    for c in copies:
        c.grad = torch.zeros_like(c)
    optimizer = torch.optim.AdamW(copies, lr=1e-5)
    optimizer.step()                                    # creates the state
    seconds = statistics.median(timed(optimizer.step, steps, device))
    del optimizer, copies
    return seconds


def predicted_ratio(partition, model, batch_size, seq_len, alpha: float, fwd: float, noise: float,
                    adam_full: float, adam_fo: float) -> tuple[float, float]:
    """Cost-model step ratio Hi-ZFO / Full FT: MACs (2 forwards + (1 + [α>0]) selected backwards vs one forward
    + the full backward), turned into seconds with the measured forward, plus the measured memory-bound passes
    (AdamW over all tensors vs over Θ_FO; the two noise passes over Θ_ZO). Also returns the MAC-only ratio."""
    from hizfo.costs import tensor_costs
    for p in model.parameters():
        p.requires_grad_(True)
    costs = tensor_costs(model, batch_size, seq_len)
    t_fp = sum(c.t_fp for c in costs)
    t_bp = sum(c.t_dw + c.t_dy for c in costs)
    order = [c.name for c in costs]
    selected = [order.index(n) for n in partition.fo]
    deepest = max(selected) if selected else -1
    sel_bp = sum(costs[k].t_dw for k in selected) + sum(c.t_dy for c in costs[: deepest + 1])
    hizfo_macs = 2 * t_fp + (1 + (alpha > 0)) * sel_bp
    per_mac = fwd / t_fp
    predicted = (hizfo_macs * per_mac + adam_fo + noise) / ((t_fp + t_bp) * per_mac + adam_full)
    return predicted, hizfo_macs / (t_fp + t_bp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    batch = make_batch(device, args.batch, args.tokens)

    from baselines.full_ft import FullFT
    from hizfo.hybrid import HiZFO
    from hizfo.zo import perturb_

    fwd = forward_seconds(device, dtype, batch, args.steps)
    rows = []
    full = measure("full_ft", lambda: FullFT(lr=2e-5), device, dtype, batch, args.steps)
    rows.append(full)
    full_step, full_peak = full["step"], full["peak"]
    del full["model"]
    hz = measure("hizfo (ρ 0.6, α 0.1)", lambda: HiZFO(lr=2e-5, rho=0.6, alpha=0.1), device, dtype, batch, args.steps)
    # the measured cost of the two noise passes over Θ_ZO
    noise = statistics.median(timed(lambda: perturb_(hz["zo_params"], 7, 0.0), args.steps, device)) * 2
    named = dict(unique_named_parameters(hz["model"]))
    adam_full = adamw_seconds(list(named.values()), device, args.steps)
    adam_fo = adamw_seconds([named[n] for n in hz["partition"].fo], device, args.steps)
    hz["predicted"], macs_only = predicted_ratio(hz["partition"], hz["model"], args.batch, args.tokens, 0.1, fwd,
                                                 noise, adam_full, adam_fo)
    rows.append(hz)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU × {torch.get_num_threads()} threads"
    print(f"\nOPT-125M-shaped, batch {args.batch}×{args.tokens}, {args.dtype}, {device_name}")
    print(f"two plain forwards: {2 * fwd:.3f} s; Full FT step {full_step:.3f} s; noise passes over Θ_ZO {noise:.3f} s; "
          f"AdamW step over all tensors {adam_full:.3f} s, over Θ_FO {adam_fo:.3f} s")
    print(f"{'method':24} {'step s':>8} {'× Full FT':>10} {'× 2 fwd':>8} {'predicted':>10} {'peak GB':>8} {'mem × FT':>9}")
    for row in rows:
        pred = f"{row['predicted']:.2f}" if "predicted" in row else "1.00"
        print(f"{row['name']:24} {row['step']:8.3f} {row['step'] / full_step:10.2f} {row['step'] / (2 * fwd):8.2f} "
              f"{pred:>10} {row['peak'] / 2**30:8.2f} {row['peak'] / full_peak:9.2f}")
    if "partition" in hz:
        part = hz["partition"]
        print(f"Hi-ZFO partition: {len(part.fo)} FO / {len(part.zo)} ZO tensors, "
              f"backward share {part.backward_flops_share:.2f}; MAC-only predicted ratio {macs_only:.2f}; "
              f"measured / predicted {hz['step'] / full_step / hz['predicted']:.2f}")


if __name__ == "__main__":
    main()
