"""Paired significance tests over per-user metric values."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats


def paired_ttest(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided paired t-test p-value; both arrays are per-user values on the same users
    and candidates. Identical arrays give p = 1 (no evidence of a difference)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired test needs equal shapes, got {a.shape} and {b.shape}")
    d = a - b
    if len(d) < 2 or np.all(d == d[0]):
        return 1.0 if np.all(d == 0) else 0.0
    return float(stats.ttest_rel(a, b).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values for one family of comparisons."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        adjusted[idx] = running
    return adjusted.tolist()
