"""Statistics the phases and tools report: Wilson intervals, the exact McNemar test, AUROC.

- ``wilson_ci(k, n)``: Wilson score interval for k successes out of n (Wilson 1927, JASA 22:209).
- ``mcnemar_exact_p(b01, b10)``: exact two-sided McNemar p from the discordant counts: under H0 they split
  Binomial(b01 + b10, 1/2), p = ``min(1, 2 * P(X <= min(b01, b10)))`` (McNemar 1947; the exact binomial form
  as in Fagerland, Lydersen & Laake 2013, and statsmodels' ``mcnemar(exact=True)``).
- ``auroc(scores, labels)``: area under the ROC curve (Mann-Whitney U; ties count 1/2).

Pure functions of numbers: no file, config or model here.
"""

from __future__ import annotations

import math


def wilson_ci(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes out of n; 95 % with z=1.96."""
    if n <= 0:
        raise ValueError(f"wilson_ci needs n > 0, got n={n}")
    if not 0 <= k <= n:
        raise ValueError(f"wilson_ci needs 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def mcnemar_exact_p(b01: int, b10: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts; 1.0 when there are none."""
    n = b01 + b10
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b01, b10) + 1))
    return min(1.0, 2 * tail / 2**n)


def auroc(scores: list[float], labels: list[bool]) -> float | None:
    """Area under the ROC curve of `scores` for predicting `labels`; None without both classes."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    ranked = sorted((s, i) for i, s in enumerate(scores))
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(ranked):
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[ranked[k][1]] = (i + j) / 2 + 1
        i = j + 1
    rank_pos = sum(r for r, y in zip(ranks, labels) if y)
    return (rank_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))
