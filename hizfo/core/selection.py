"""Exact tensor selection under a backward-FLOPs budget (paper Appendix C; docs/design.md, "Selection").

Tensors are indexed from the output side (index 0 nearest the output). Selecting a mask m
costs ``Σ_k m_k·t_dw_k + Σ_{j≤d} t_dy_j``, where d is the deepest selected index: the
activation gradient must flow from the output down to d (paper eq. 8). We maximise the
total importance ``Σ_k m_k·I_k`` (paper eq. 7) within the budget.

GreenTrainer's DP (Appendix C.2) is O(N²·T) and only approximate: it reuses a
sub-solution P[k_c, t] only when that sub-solution happens to select k_c. Here the t_dy
part is handled exactly by noting that it depends on d alone. For a fixed d, what remains
is a 0/1 knapsack over tensors 0..d-1 with capacity ``budget − Σ_{j≤d} t_dy_j − t_dw_d``
(tensor d itself forced in). One forward knapsack over k, vectorised over capacities,
gives the best prefix value F_d[c] for every d at once: O(N·T) work, exact.
"""
from __future__ import annotations

import numpy as np


def _as_costs(values: np.ndarray, name: str, n: int) -> np.ndarray:
    array = np.asarray(values)
    if array.shape != (n,):
        raise ValueError(f"select_tensors: {name} has shape {array.shape}, expected ({n},)")
    as_int = array.astype(np.int64)
    if not np.array_equal(as_int, array) or (as_int < 0).any():
        raise ValueError(f"select_tensors: {name} must hold non-negative integers")
    return as_int


def selection_cost(mask: np.ndarray, t_dw: np.ndarray, t_dy: np.ndarray) -> int:
    """Σ m_k·t_dw_k + Σ_{j≤d} t_dy_j, d the deepest selected index (0 for an empty mask)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return 0
    deepest = int(np.flatnonzero(mask)[-1])
    return int(np.asarray(t_dw, dtype=np.int64)[mask].sum() + np.asarray(t_dy, dtype=np.int64)[: deepest + 1].sum())


def select_tensors(importance: np.ndarray, t_dw: np.ndarray, t_dy: np.ndarray, budget: int) -> np.ndarray:
    """An exact maximum-importance mask (index 0 nearest the output) whose selection_cost is ≤ budget."""
    importance = np.asarray(importance, dtype=np.float64)
    if importance.ndim != 1:
        raise ValueError(f"select_tensors: importance must be 1-D (got shape {importance.shape})")
    if np.isnan(importance).any():
        raise ValueError("select_tensors: importance holds NaN")
    n = importance.shape[0]
    t_dw = _as_costs(t_dw, "t_dw", n)
    t_dy = _as_costs(t_dy, "t_dy", n)
    if int(budget) != budget or budget < 0:
        raise ValueError(f"select_tensors: budget must be a non-negative integer (got {budget})")
    mask = np.zeros(n, dtype=bool)
    if n == 0:
        return mask
    # capacities beyond the sum of all t_dw never bind: this bounds the table at N × (Σ t_dw + 1)
    capacity = int(min(int(budget), int(t_dw.sum())))
    reach = int(budget) - np.cumsum(t_dy) - t_dw  # room left for tensors above d, with d forced in: [N]

    value = np.zeros(capacity + 1)  # F_k[c]: best importance of tensors 0..k-1 within weight c
    take = np.zeros((n, capacity + 1), dtype=bool)  # take[k, c]: tensor k is in F_{k+1}[c]'s solution
    best_value, best_d = 0.0, -1  # the empty mask is always feasible
    for k in range(n):
        # tensor k as the deepest selected: only a positive importance can beat stopping above it
        if importance[k] > 0 and reach[k] >= 0:
            candidate = value[min(int(reach[k]), capacity)] + importance[k]
            if candidate > best_value:  # strict: ties keep the shallower d (cheaper backward)
                best_value, best_d = candidate, k
        if importance[k] > 0 and t_dw[k] <= capacity:
            w = int(t_dw[k])
            shifted = value[: capacity + 1 - w] + importance[k]  # F_k[c − w] + I_k for c ≥ w
            better = shifted > value[w:]  # strict: ties leave tensor k out
            take[k, w:] = better
            value[w:] = np.where(better, shifted, value[w:])
    if best_d < 0:
        return mask
    # backtrace the knapsack over tensors above best_d
    mask[best_d] = True
    c = min(int(reach[best_d]), capacity)
    for k in range(best_d - 1, -1, -1):
        if take[k, c]:
            mask[k] = True
            c -= int(t_dw[k])
    return mask
