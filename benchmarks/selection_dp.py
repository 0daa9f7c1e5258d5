"""Benchmark: exact O(N·T) tensor selection vs a GreenTrainer-style approximate O(N²·T) DP.

Run: ``python -m benchmarks.selection_dp`` (one process, pinned to one CPU core).

Instances come from the real cost model (hizfo.core.costs.tensor_costs) on meta-device models
shaped like OPT-350M (388 tensors) and OPT-13B (644 tensors), batch 4 × 512 tokens,
costs quantised to Tq = 1000 buckets, ρ = 0.6 (Hi-ZFO's default) and 0.7 (GT-0.7), random
importances. The reference DP is written from the description in the paper's Appendix C.2
(P[k, t] with a backtrace over the nearest selected tensor k_c), in pure Python loops.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch

from hizfo.core.costs import backward_budget, cost_arrays, integer_budget, quantize_costs, tensor_costs
from hizfo.core.selection import select_tensors, selection_cost

SHAPES = {  # transformers.OPTConfig arguments
    "OPT-350M": dict(hidden_size=1024, num_hidden_layers=24, ffn_dim=4096, num_attention_heads=16,
                     word_embed_proj_dim=512, do_layer_norm_before=False, vocab_size=50272),
    "OPT-13B": dict(hidden_size=5120, num_hidden_layers=40, ffn_dim=20480, num_attention_heads=40,
                    word_embed_proj_dim=5120, vocab_size=50272),
}


def pin_to_one_core() -> str:
    """One thread, one core: the figures are single-core figures."""
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to core {core}"
    return "not pinned (no sched_setaffinity)"


def opt_instance(shape: str, batch: int = 4, seq_len: int = 512, buckets: int = 1000):
    """Quantised (t_fp total, q_dw, q_dy, t_dw, t_dy) of an OPT-shaped model built on the meta device (no memory)."""
    from transformers import AutoModelForCausalLM, OPTConfig
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(OPTConfig(**SHAPES[shape]))
    t_fp, t_dw, t_dy = cost_arrays(tensor_costs(model, batch, seq_len))
    q_dw, q_dy = quantize_costs(t_dw, t_dy, buckets)
    return int(t_fp.sum()), q_dw, q_dy, t_dw, t_dy


def random_importance(rng: np.random.Generator, n: int) -> np.ndarray:
    """Heavy-tailed importances, one in ten negative, scaled by max|I| as GreenTrainer does."""
    magnitude = rng.lognormal(0.0, 1.5, n)
    sign = np.where(rng.random(n) < 0.1, -1.0, 1.0)
    values = magnitude * sign
    return values / np.abs(values).max()


def greentrainer_dp(importance: np.ndarray, t_dw: np.ndarray, t_dy: np.ndarray, budget: int,
                    deadline: float = float("inf")) -> tuple[np.ndarray | None, int]:
    """Appendix C.2's approximate DP in pure Python: P[k, t] over the top k tensors, backtrace over k_c.

    Costs follow this project's convention (Σ_{j≤d} t_dy_j), so both DPs solve the same problem.
    A sub-solution P[k_c, t'] is reused only when it selects its own last tensor k_c (the nearest
    selected tensor above k), which is what makes the DP approximate. Returns (mask or None if the
    deadline passed, number of rows k completed).
    """
    n = len(importance)
    imp = [float(x) for x in importance]
    dw = [int(x) for x in t_dw]
    dy = [int(x) for x in t_dy]
    prefix = [0]  # prefix[k] = Σ_{j<k} t_dy_j (0-based tensors)
    for x in dy:
        prefix.append(prefix[-1] + x)
    # P[k][t], last[k][t] (deepest selected tensor of that sub-solution, -1 none), back[k][t] (k_c + 1, or 0/-1)
    value = [[0.0] * (budget + 1)]
    last = [[-1] * (budget + 1)]
    back: list[list[int]] = [[-1] * (budget + 1)]
    for k in range(1, n + 1):
        if time.perf_counter() > deadline:
            return None, k - 1
        i = k - 1  # the tensor this row decides on
        prev_v, prev_l = value[k - 1], last[k - 1]
        row_v, row_l, row_b = list(prev_v), list(prev_l), [-1] * (budget + 1)
        alone = dw[i] + prefix[i + 1]  # tensor i is the only (hence nearest-the-output) selected tensor
        for t in range(budget + 1):
            best, best_b = row_v[t], -1
            if alone <= t and imp[i] > best:
                best, best_b = imp[i], 0
            for kc in range(k - 1, 0, -1):  # nearest selected tensor above i is tensor kc − 1
                delta = dw[i] + prefix[i + 1] - prefix[kc]  # eq. (8): t_dw_i + Σ t_dy from kc up to i
                if delta > t:
                    break
                rest = t - delta
                if last[kc][rest] == kc - 1:  # reuse only if that sub-solution selected its last tensor
                    candidate = value[kc][rest] + imp[i]
                    if candidate > best:
                        best, best_b = candidate, kc
            if best_b >= 0:
                row_v[t], row_l[t], row_b[t] = best, i, best_b
        value.append(row_v)
        last.append(row_l)
        back.append(row_b)
    mask = np.zeros(n, dtype=bool)
    k, t = n, budget
    while k > 0:
        b = back[k][t]
        if b < 0:
            k -= 1
            continue
        i = k - 1
        mask[i] = True
        if b == 0:
            break
        t -= dw[i] + prefix[i + 1] - prefix[b]
        k = b
    return mask, n


def milp_optimum(importance: np.ndarray, t_dw: np.ndarray, t_dy: np.ndarray, budget: int) -> float | None:
    """An independent exact optimum from a MILP (scipy/HiGHS), or None without scipy.

    Variables m_k (selected) and y_j (the activation gradient reaches j): y_j ≥ m_j, y_j ≥ y_{j+1},
    Σ m_k·t_dw_k + Σ y_j·t_dy_j ≤ budget.
    """
    try:
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import lil_matrix
    except ImportError:
        return None
    n = len(importance)
    rows = lil_matrix((1 + n + n - 1, 2 * n))
    rows[0, :n], rows[0, n:] = t_dw, t_dy
    for k in range(n):
        rows[1 + k, k], rows[1 + k, n + k] = 1, -1  # m_k − y_k ≤ 0
    for j in range(n - 1):
        rows[1 + n + j, n + j + 1], rows[1 + n + j, n + j] = 1, -1  # y_{j+1} − y_j ≤ 0
    upper = np.concatenate([[budget], np.zeros(2 * n - 1)])
    result = milp(c=np.concatenate([-importance, np.zeros(n)]), integrality=np.ones(2 * n),
                  bounds=Bounds(0, 1), constraints=LinearConstraint(rows.tocsr(), -np.inf, upper),
                  options={"mip_rel_gap": 0.0})
    return None if result.x is None else float(importance @ np.round(result.x[:n]))


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median, min) wall-clock seconds of fn() over `repeats` runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--gt-cap", type=float, default=300.0, help="seconds the pure-Python DP may run per instance")
    args = parser.parse_args()
    print(pin_to_one_core(), f"torch threads {torch.get_num_threads()}, cores visible {os.cpu_count()}")
    rng = np.random.default_rng(0)

    for shape in ("OPT-350M", "OPT-13B"):
        fp_total, q_dw, q_dy, t_dw, t_dy = opt_instance(shape)
        n = len(q_dw)
        for rho in (0.6, 0.7):
            rho_bp = backward_budget(rho, fp_total, float(t_dw.sum() + t_dy.sum()))
            budget = integer_budget(rho_bp, q_dw, q_dy)
            importance = random_importance(rng, n)
            mask = select_tensors(importance, q_dw, q_dy, budget)
            ours, fastest = timed(lambda: select_tensors(importance, q_dw, q_dy, budget), args.repeats)
            assert selection_cost(mask, q_dw, q_dy) <= budget
            check = milp_optimum(importance, q_dw, q_dy, budget)
            if check is not None:
                assert abs(check - importance[mask].sum()) < 1e-6, (check, importance[mask].sum())
            print(f"{shape}: {n} tensors, Σ quantised = {int(q_dw.sum() + q_dy.sum())}, ρ = {rho} → ρ_bp = "
                  f"{rho_bp:.3f}, budget = {budget}; exact DP median {ours * 1e3:.2f} ms (min {fastest * 1e3:.2f}) "
                  f"over {args.repeats} runs, "
                  f"{int(mask.sum())} tensors selected, importance {importance[mask].sum():.3f}"
                  + ("" if check is None else f" (= the MILP optimum {check:.3f})"))
            if rho != 0.6:
                continue
            start = time.perf_counter()
            gt_mask, rows = greentrainer_dp(importance, q_dw, q_dy, budget, deadline=start + args.gt_cap)
            gt_time = time.perf_counter() - start
            if gt_mask is None:
                # the work of row k grows ~ k: extrapolate from the rows finished
                estimate = gt_time * (n * n) / max(rows * rows, 1)
                print(f"  reference DP stopped at the {args.gt_cap:.0f} s cap after {rows}/{n} rows; "
                      f"extrapolated ~{estimate:.0f} s, ≥ {estimate / ours:.0f}× the exact DP")
                continue
            assert selection_cost(gt_mask, q_dw, q_dy) <= budget
            print(f"  reference DP (Appendix C.2, pure Python): {gt_time:.2f} s = {gt_time / ours:.0f}× the exact DP; "
                  f"importance {importance[gt_mask].sum():.3f} = "
                  f"{importance[gt_mask].sum() / importance[mask].sum():.4f} of the exact optimum")

    # quality of the approximate DP on small random instances (exact optimum from select_tensors,
    # itself checked against brute force in tests/unit/core/test_selection.py)
    print("small random instances (quantised costs, budget = 60% of the total):")
    for n in (10, 20, 40, 80):
        ratios = []
        for _ in range(50):
            t_dw_small = rng.integers(0, 20, n)
            t_dy_small = rng.integers(0, 10, n)
            budget = int(0.6 * (t_dw_small.sum() + t_dy_small.sum()))
            importance = random_importance(rng, n)
            exact = importance[select_tensors(importance, t_dw_small, t_dy_small, budget)].sum()
            approx_mask, _ = greentrainer_dp(importance, t_dw_small, t_dy_small, budget)
            assert selection_cost(approx_mask, t_dw_small, t_dy_small) <= budget
            ratios.append(importance[approx_mask].sum() / exact if exact > 0 else 1.0)
        ratios_arr = np.array(ratios)
        print(f"  N = {n:3d}: reference/exact importance mean {ratios_arr.mean():.4f}, min {ratios_arr.min():.4f}, "
              f"below the optimum in {(ratios_arr < 1 - 1e-12).mean() * 100:.0f}% of 50 instances")


if __name__ == "__main__":
    main()
