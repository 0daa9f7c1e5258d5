"""Step cost of Hi-ZFO against Full FT (and a forward, and MeZO) at a real model's shape, with the cost model's
prediction.

    python -m benchmarks.step_cost [--shape opt-125m|opt-1.3b|qwen2-0.5b] [--layers N --hidden H --ffn F]
                                   [--precision fp32|bf16-mixed|bf16] [--batch 4] [--tokens 128] [--steps 3]

Prints one table (step time and peak memory of every row, as ratios to Full FT; MeZO's peak against an
inference-only forward), Hi-ZFO's profiling time as a number of Full FT steps, the cost model's predicted step
ratio, and last the line ``hizfo_step_over_fullft=… profiling_over_fullft_step=… hizfo_peak_over_fullft=…``.
How time and peak are measured: benchmarks/harness.py.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time
from typing import Any

import torch


from benchmarks.harness import build_model, main_for, make_batch, sync

ROWS = ("forward", "full_ft", "hizfo", "profiling", "mezo")


def _timed(fn, steps: int, device: torch.device) -> float:
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def adamw_seconds(shapes: list[torch.Size], device: torch.device, steps: int) -> float:
    """One AdamW step over fp32 tensors of these shapes (a memory-bound pass that MAC counts do not see)."""
    if not shapes:
        return 0.0
    copies = [torch.zeros(shape, dtype=torch.float32, device=device, requires_grad=True) for shape in shapes]
    for c in copies:
        c.grad = torch.zeros_like(c)
    optimizer = torch.optim.AdamW(copies, lr=1e-5)
    optimizer.step()
    seconds = _timed(optimizer.step, steps, device)
    del optimizer, copies
    return seconds


def prediction(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> list[str]:
    """Cost-model step ratio Hi-ZFO / Full FT: MACs (2 forwards + (1 + [α>0, loss reading]) selected backwards vs
    1 forward + the full backward) priced with the measured forward, plus the memory-bound passes MACs miss
    (AdamW over all tensors vs over Θ_FO; the ZO noise passes over Θ_ZO), measured here."""
    hz, ft, fwd = results.get("hizfo", {}), results.get("full_ft", {}), results.get("forward", {})
    if not all("step_s" in r for r in (hz, ft, fwd)):
        return []
    from hizfo.core.costs import tensor_costs
    from hizfo.core.hybrid import HiZFOConfig
    from hizfo.core.methods import unique_named_parameters
    from hizfo.core.zo import perturb_
    device = torch.device(args.device)
    model = build_model(args)
    make_batch(args)
    for p in model.parameters():
        p.requires_grad_(True)
    costs = tensor_costs(model, args.batch, args.tokens)
    order = [c.name for c in costs]
    fo = set(hz["fo_names"])
    selected = [k for k, n in enumerate(order) if n in fo]
    deepest = max(selected) if selected else -1
    t_fp = sum(c.t_fp for c in costs)
    t_bp = sum(c.t_dw + c.t_dy for c in costs)
    sel_bp = sum(costs[k].t_dw for k in selected) + sum(c.t_dy for c in costs[: deepest + 1])
    cfg = HiZFOConfig()
    loss_reading = getattr(cfg, "alpha_mode", "loss") == "loss" and cfg.alpha > 0
    macs = 2 * t_fp + (1 + loss_reading) * sel_bp
    named = dict(unique_named_parameters(model))
    zo_params = [p for n, p in named.items() if n not in fo]
    with torch.no_grad():
        noise = 2 * _timed(lambda: perturb_(zo_params, 7, 0.0), max(2, args.steps), device)
    all_shapes, fo_shapes = [p.shape for p in named.values()], [named[n].shape for n in fo]
    del model, named, zo_params          # AdamW over every tensor needs Full FT's memory: not the model on top
    gc.collect()
    adam_all = adamw_seconds(all_shapes, device, max(2, args.steps))
    adam_fo = adamw_seconds(fo_shapes, device, max(2, args.steps))
    per_mac = fwd["step_s"] / t_fp
    predicted = (macs * per_mac + adam_fo + noise) / ((t_fp + t_bp) * per_mac + adam_all)
    measured = hz["step_s"] / ft["step_s"]
    return [f"cost model: Hi-ZFO step / Full FT step predicted {predicted:.2f} (MACs only {macs / (t_fp + t_bp):.2f}); "
            f"measured {measured:.2f}, measured / predicted {measured / predicted:.2f}",
            f"  (forward {fwd['step_s']:.3f} s, noise passes over Θ_ZO {noise:.3f} s, AdamW over all tensors "
            f"{adam_all:.3f} s, over Θ_FO {adam_fo:.3f} s)"]


if __name__ == "__main__":
    main_for(__file__, __doc__, ROWS, extra=prediction)
