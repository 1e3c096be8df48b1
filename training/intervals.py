"""Exact binomial intervals for the rates the evaluations report.

A rate measured on n items is itself uncertain: one false copy among 1,031 genuine tokens is a rate of
0.1 %, but a true rate of 0.5 % shows one or none in 1,031 about one time in 28. The Clopper-Pearson
interval (the beta quantiles of k successes in n trials) holds the rate with at least its stated
confidence, whatever it is; the copy report prints it beside its genuine rate and for its cell size, and
`nftlens calibrate` beside its cross-fitted false-copy rate."""

from __future__ import annotations

from scipy.stats import beta, binom


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact two-sided `level` interval for a binomial rate seen as k successes in n trials."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    tail = (1 - level) / 2
    low = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - tail, k + 1, n - k))
    return low, high


def interval_text(k: int, n: int, level: float = 0.95, digits: int = 3) -> str:
    """'95 % interval 0.981–0.995, 297 of 300': a rate's `clopper_pearson` interval, as the reports print it."""
    low, high = clopper_pearson(k, n, level)
    return f"{level * 100:g} % interval {low:.{digits}f}–{high:.{digits}f}, {k} of {n}"


def chance_below(k: int, n: int, target: float) -> float:
    """How often a rate truly at `target` shows k or fewer successes in n trials (one-sided binomial): a
    cell just under its target by chance has a large value, one truly below it a small one."""
    return float(binom.cdf(k, n, target))
