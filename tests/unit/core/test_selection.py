"""Exact tensor selection (Appendix C), the ρ → backward-budget conversion and the cost quantisation."""
from __future__ import annotations

import numpy as np
import pytest

from hizfo.core.costs import backward_budget, integer_budget, quantize_costs
from hizfo.errors import ConfigError
from hizfo.core.selection import select_tensors, selection_cost


def brute_force(importance: np.ndarray, t_dw: np.ndarray, t_dy: np.ndarray, budget: int) -> float:
    """The best Σ m_k·I_k over all 2^N masks with cost ≤ budget (empty mask included)."""
    n = len(importance)
    masks = ((np.arange(2 ** n)[:, None] >> np.arange(n)[None, :]) & 1).astype(bool)  # [2^N, N]
    deepest = np.where(masks.any(1), n - 1 - np.argmax(masks[:, ::-1], axis=1), -1)
    prefix_dy = np.concatenate([[0], np.cumsum(t_dy)])  # prefix_dy[d + 1] = Σ_{j≤d} t_dy_j
    cost = masks.astype(np.int64) @ t_dw + prefix_dy[deepest + 1]
    value = masks.astype(np.float64) @ importance
    return float(value[cost <= budget].max())


def random_instance(rng: np.random.Generator, n: int):
    style = rng.integers(4)
    if style == 0:  # importances with ties
        importance = rng.integers(-2, 4, n).astype(np.float64)
    else:
        importance = rng.normal(0.3, 1.0, n)
    t_dw = rng.integers(0, 12, n)
    t_dy = rng.integers(0, 8, n)
    t_dw[rng.random(n) < 0.2] = 0  # zero costs, as quantised biases and norms
    t_dy[rng.random(n) < 0.3] = 0
    total = int(t_dw.sum() + t_dy.sum())
    budget = int(rng.choice([0, rng.integers(0, total + 1), total, total + 5]))
    return importance, t_dw, t_dy, budget


@pytest.mark.parametrize("seed", range(100))
def test_select_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for n in range(1, 15):
        importance, t_dw, t_dy, budget = random_instance(rng, n)
        mask = select_tensors(importance, t_dw, t_dy, budget)
        assert mask.dtype == bool and mask.shape == (n,)
        assert selection_cost(mask, t_dw, t_dy) <= budget
        assert float(importance[mask].sum()) == pytest.approx(brute_force(importance, t_dw, t_dy, budget), abs=1e-9)
        assert (importance[mask] > 0).all(), "a tensor of zero or negative importance was selected"


def test_select_edge_cases() -> None:
    t_dw, t_dy = np.array([3, 2, 5]), np.array([1, 1, 1])
    # nothing fits, or nothing is worth it: the empty mask
    assert not select_tensors(np.array([1.0, 1.0, 1.0]), t_dw, t_dy, 0).any()
    assert not select_tensors(np.array([-1.0, 0.0, -3.0]), t_dw, t_dy, 100).any()
    # a budget above everything takes every positive tensor
    assert select_tensors(np.array([1.0, -1.0, 2.0]), t_dw, t_dy, 100).tolist() == [True, False, True]
    # the deepest tensor is worth it only if the activation gradient can reach it
    assert select_tensors(np.array([0.1, 0.1, 5.0]), t_dw, t_dy, 8).tolist() == [False, False, True]
    assert select_tensors(np.array([0.1, 0.1, 5.0]), t_dw, t_dy, 7).tolist() == [True, True, False]
    # zero-cost tensors are free
    assert select_tensors(np.array([1.0, 2.0]), np.array([0, 0]), np.array([0, 0]), 0).all()
    assert select_tensors(np.array([]), np.array([], dtype=int), np.array([], dtype=int), 3).shape == (0,)


def test_select_is_deterministic_and_prefers_shallower_ties() -> None:
    importance = np.array([1.0, 1.0, 1.0, 1.0])
    t_dw, t_dy = np.array([1, 1, 1, 1]), np.array([0, 0, 0, 0])
    first = select_tensors(importance, t_dw, t_dy, 2)
    assert first.tolist() == [True, True, False, False]
    assert np.array_equal(first, select_tensors(importance, t_dw, t_dy, 2))


def test_select_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="t_dw"):
        select_tensors(np.ones(2), np.array([1.5, 1]), np.array([0, 0]), 3)
    with pytest.raises(ValueError, match="t_dy"):
        select_tensors(np.ones(2), np.array([1, 1]), np.array([0, -1]), 3)
    with pytest.raises(ValueError, match="budget"):
        select_tensors(np.ones(2), np.array([1, 1]), np.array([0, 0]), -1)
    with pytest.raises(ValueError, match="NaN"):
        select_tensors(np.array([np.nan, 1.0]), np.array([1, 1]), np.array([0, 0]), 3)


def test_large_instance_is_feasible_and_beats_greedy() -> None:
    rng = np.random.default_rng(7)
    n = 644
    importance = rng.uniform(-0.2, 1.0, n)
    t_dw, t_dy = rng.integers(0, 4, n), rng.integers(0, 3, n)
    budget = 600
    mask = select_tensors(importance, t_dw, t_dy, budget)
    assert selection_cost(mask, t_dw, t_dy) <= budget
    # greedy from the output side (take every positive tensor while it fits) is one feasible solution
    greedy = np.zeros(n, dtype=bool)
    for k in range(n):
        trial = greedy.copy()
        trial[k] = importance[k] > 0
        if selection_cost(trial, t_dw, t_dy) <= budget:
            greedy = trial
    assert importance[mask].sum() >= importance[greedy].sum() - 1e-9


@pytest.mark.parametrize("rho, t_fp, t_bp, expected", [
    (1.0, 1.0, 2.0, 1.0),  # full fine-tuning spends the whole backward
    (0.6, 1.0, 2.0, 0.6 * 1.5 - 0.5),
    (0.7, 1.0, 2.0, 0.55),
    (0.3, 1.0, 2.0, 0.05),  # 0.3·1.5 − 0.5 < 0: clamped
    (1 / 3, 1.0, 2.0, 0.05),  # exactly 0: clamped
    (0.2, 1.0, 2.0, 0.05),  # same as 0.3: Table 4's identical rows
])
def test_backward_budget(rho: float, t_fp: float, t_bp: float, expected: float) -> None:
    assert backward_budget(rho, t_fp, t_bp) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("rho", [0.0, -0.1, 1.01, float("nan")])
def test_backward_budget_rejects_rho_outside_unit_interval(rho: float) -> None:
    with pytest.raises(ConfigError, match="method.rho"):
        backward_budget(rho, 1.0, 2.0)


def test_quantize_costs() -> None:
    t_dw = np.array([500, 10, 3000, 0, 1])
    t_dy = np.array([400, 0, 2000, 0, 2089])
    q_dw, q_dy = quantize_costs(t_dw, t_dy, buckets=1000)  # total backward 8000
    assert q_dw.tolist() == [62, 1, 375, 0, 0] and q_dy.tolist() == [50, 0, 250, 0, 261]
    assert q_dw.dtype == np.int64 and q_dy.dtype == np.int64
    total = int(q_dw.sum() + q_dy.sum())
    assert 1000 - len(t_dw) * 2 <= total <= 1000  # floors lose less than one bucket per entry
    assert integer_budget(0.55, q_dw, q_dy) == int(0.55 * total)
    # a realistic spread: tiny tensors (biases, norms) cost 0 buckets
    rng = np.random.default_rng(0)
    big = rng.integers(5 * 10 ** 9, 10 ** 10, 100)
    tiny = rng.integers(1, 10 ** 5, 100)
    q_dw, q_dy = quantize_costs(np.concatenate([big, tiny]), np.concatenate([big, tiny * 0]), buckets=1000)
    assert (q_dw[100:] == 0).all() and (q_dw[:100] > 0).all()
    assert 1000 - 400 <= q_dw.sum() + q_dy.sum() <= 1000
