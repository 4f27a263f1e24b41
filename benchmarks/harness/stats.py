"""Small statistics for the benchmark: medians, rank correlation (scipy when installed)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

__all__ = ["median", "ranks", "spearman"]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank (as scipy.stats.rankdata)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rho of paired samples; None with fewer than 3 pairs or a constant side."""
    if len(a) != len(b):
        raise ValueError(f"need paired samples, got {len(a)} and {len(b)}")
    if len(a) < 3:
        return None
    try:
        from scipy.stats import spearmanr  # optional; the fallback below is the same statistic
    except ImportError:
        ra, rb = ranks(a), ranks(b)
        ma, mb = statistics.fmean(ra), statistics.fmean(rb)
        cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
        va = sum((x - ma) ** 2 for x in ra)
        vb = sum((y - mb) ** 2 for y in rb)
        return None if va == 0 or vb == 0 else cov / math.sqrt(va * vb)
    rho = spearmanr(a, b).statistic
    return None if math.isnan(rho) else float(rho)
