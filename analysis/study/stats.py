"""The real-model study's statistics: Student-t intervals, paired t tests, TOST, Holm, the smallest detectable
difference, and the verdict of a difference (analysis/study/driver.py puts them to use).

Intervals are Student-t: mean ± t_{0.975, n-1} · s / √n over seeds (scipy.stats.t), and over the per-seed
differences of two arms for a paired difference (seeds present in both arms). Fewer than two values give no
interval ("–"); a verdict then says inconclusive. Paired differences that are all equal (s = 0, which discrete
scores such as pass@1 on 81 problems make likely) give no t interval either, since a zero-width interval would be
invented: their p value comes from the exact sign-flip test (sign_flip_p).

Every comparison behind a verdict is one paired test with a p value: a two-sided paired t test of "no difference"
(significant ⇔ the 95 % CI excludes 0), or, for claim 7's stability, an equivalence test (TOST: significant ⇔ the
90 % CI lies inside ±δ). The comparisons of one (model, task) are one family; their p values are Holm-adjusted
(Holm 1979, step-down) and the claims.md gives both verdicts, raw and Holm, with the family's size. Each
difference also gets the smallest difference its seeds could have detected: the true mean difference at which the
same two-sided paired t test at α = 0.05 has 80 % power, given the pairs' number and their observed s.d.
(noncentral t, scipy.stats.nct).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE           # every test's level, two-sided for differences
POWER = 0.80                     # the power behind the smallest detectable difference
EQUIVALENCE_CONFIDENCE = 1 - 2 * ALPHA   # TOST at α = 0.05 is the 90 % CI inside ±δ (Schuirmann 1987)
SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"


@dataclass
class Interval:
    """Mean and 95 % t interval of some values; ``lo``/``hi`` are None with fewer than two values."""
    n: int
    mean: Optional[float]
    lo: Optional[float] = None
    hi: Optional[float] = None
    sd: Optional[float] = None           # the values' sample standard deviation (ddof 1)

    @property
    def half(self) -> Optional[float]:
        return None if self.lo is None else (self.hi - self.lo) / 2

    def show(self, decimals: int = 2) -> str:
        """``12.34 ± 0.56``; ``12.34 ± –`` for a single value; ``–`` for none."""
        if self.mean is None:
            return "–"
        return f"{self.mean:.{decimals}f} ± {'–' if self.half is None else f'{self.half:.{decimals}f}'}"

    def show_ci(self, decimals: int = 2) -> str:
        """``+1.23 [0.45, 2.01]`` (for differences)."""
        if self.mean is None:
            return "–"
        ci = "–" if self.lo is None else f"[{self.lo:+.{decimals}f}, {self.hi:+.{decimals}f}]"
        return f"{self.mean:+.{decimals}f} {ci}"


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean ± t_{(1+c)/2, n-1} · s / √n (s the sample standard deviation); no interval for n < 2."""
    data = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    n = len(data)
    if n == 0:
        return Interval(0, None)
    mean = float(np.mean(data))
    if n < 2:
        return Interval(n, mean)
    sd = float(np.std(data, ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * sd / math.sqrt(n))
    return Interval(n, mean, mean - half, mean + half, sd)


def difference_interval(differences: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The t interval of paired differences, or none where they are all equal (s = 0): a zero-width interval
    would be invented, and their test is the exact sign-flip one (t_test_p)."""
    interval = t_interval(differences, confidence)
    return Interval(interval.n, interval.mean, sd=0.0) if interval.n >= 2 and interval.sd == 0 else interval


def _clean(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def t_test_p(values: Sequence[float], null: float = 0.0, alternative: str = "two-sided") -> Optional[float]:
    """The one-sample t test's p value for mean = ``null`` (paired differences); None with fewer than two values.

    ``alternative``: two-sided | greater (mean > null) | less. Identical values (s = 0) leave the t statistic
    undefined (c / 0), and no p value can come from a variance of 0: they get the exact sign-flip test's p instead
    (sign_flip_p), which needs no variance, so n identical differences are never more significant than n pairs
    can be (two-sided at least 2 / 2^n: 0.25 for 3 seeds).
    """
    data = _clean(values)
    if len(data) < 2:
        return None
    if float(np.std(data, ddof=1)) == 0.0:
        return sign_flip_p(data, null, alternative)
    return float(stats.ttest_1samp(data, null, alternative=alternative).pvalue)


def sign_flip_p(values: Sequence[float], null: float = 0.0, alternative: str = "two-sided") -> Optional[float]:
    """The exact paired permutation (sign-flip) test of mean = ``null``: under the null each difference from
    ``null`` is as likely negative as positive, so the p value is the share of the 2^n sign assignments whose mean
    is at least as far out (in the alternative's direction) as the observed one. Exact; n ≤ 20 (2^n assignments)."""
    data = [v - null for v in _clean(values)]
    n = len(data)
    if n == 0:
        return None
    if n > 20:
        raise ValueError(f"sign_flip_p enumerates 2^n sign assignments; n = {n} > 20")
    observed = sum(data) / n
    tolerance = 1e-12 * max(1.0, max(abs(v) for v in data))
    hits = 0
    for signs in itertools.product((1, -1), repeat=n):
        flipped = sum(s * v for s, v in zip(signs, data)) / n
        hits += {"two-sided": abs(flipped) >= abs(observed) - tolerance,
                 "greater": flipped >= observed - tolerance,
                 "less": flipped <= observed + tolerance}[alternative]
    return hits / 2 ** n


def tost(values: Sequence[float], delta: float) -> tuple[Optional[float], Optional[float]]:
    """Two one-sided t tests against the margin ±``delta``: (p of equivalence, p of non-equivalence).

    Equivalence (|mean| < δ) has p = max(p[mean > −δ], p[mean < δ]); below ALPHA ⇔ the 90 % CI lies inside ±δ.
    Non-equivalence has p = min(p[mean > δ], p[mean < −δ]); below ALPHA ⇔ the 90 % CI lies wholly outside ±δ.
    """
    above, below = t_test_p(values, -delta, "greater"), t_test_p(values, delta, "less")
    if above is None:
        return None, None
    beyond = min(t_test_p(values, delta, "greater"), t_test_p(values, -delta, "less"))
    return max(above, below), beyond


def min_detectable(n: int, sd: Optional[float], alpha: float = ALPHA, power: float = POWER) -> Optional[float]:
    """The smallest true mean difference a two-sided paired t test on ``n`` pairs with s.d. ``sd`` finds with
    ``power``: solves P(|T| > t_{1-α/2, n-1}) = power for T ~ noncentral t(n-1, δ√n/sd). None for n < 2 or s = 0."""
    if n < 2 or sd is None:
        return None
    if sd == 0:                                     # no variance estimate: the power is undefined, not perfect
        return None
    df, crit = n - 1, stats.t.ppf(1 - alpha / 2, n - 1)

    def shortfall(effect: float) -> float:          # effect in units of sd; the far tail is < 1e-6 (nan in scipy)
        nc = effect * math.sqrt(n)
        return float(stats.nct.sf(crit, df, nc) + np.nan_to_num(stats.nct.cdf(-crit, df, nc)) - power)
    from scipy.optimize import brentq
    high = 1.0
    while shortfall(high) < 0:                      # n = 2 needs ~ 10 s.d.; widen the bracket until power is met
        high *= 2
    return float(brentq(shortfall, 0.0, high) * sd)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p values (Holm 1979): sorted ascending, p_(i) · (m − i + 1), made monotone."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[index]))
        adjusted[index] = running
    return adjusted


def verdict(interval: Interval) -> str:
    """For a difference oriented so that > 0 is the paper's direction: the CI above 0, below 0, or neither."""
    if interval.lo is None:
        return INCONCLUSIVE
    if interval.lo > 0:
        return SUPPORTED
    if interval.hi < 0:
        return CONTRADICTED
    return INCONCLUSIVE
