"""Tie-aware ranking metrics for one positive among n candidates, as pure functions.

Tie rule: when the positive's score ties with others, its rank is taken as uniformly
distributed over the tied block, and a user's value is the expectation over that rank.
A constant scorer therefore gets exactly the random expectation (NDCG@1 = 1/n).

Abstention: a row that is entirely NaN means the system named no candidate (an LLM's
unparseable answer). It is a miss: the positive ranks last (rank n), so it scores 0 at
every cutoff below n. Any other non-finite score is an error, never a silent rank.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def positive_index(requests: Sequence, positives: Sequence[str]) -> np.ndarray:
    """Column of each positive in its request's candidate list."""
    out = np.empty(len(requests), dtype=np.int64)
    for n, (req, pos) in enumerate(zip(requests, positives, strict=True)):
        out[n] = req.candidates.index(pos)
    return out


def abstained(scores: np.ndarray) -> np.ndarray:
    """Rows that are entirely NaN: the system ranked no candidate first (a miss)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (users x candidates), got shape {scores.shape}")
    return np.isnan(scores).all(axis=1) if scores.shape[1] else np.zeros(len(scores), bool)


def _rank_bounds(scores: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(number strictly above the positive, number tied with it excluding itself)."""
    scores = np.asarray(scores, dtype=np.float64)
    skip = abstained(scores)
    bad = ~np.isfinite(scores) & ~skip[:, None]
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"non-finite score {scores[row, col]} for user row {row}, candidate {col}")
    p = scores[np.arange(len(scores)), pos][:, None]
    above = np.where(skip, scores.shape[1] - 1, (scores > p).sum(axis=1))
    tied = np.where(skip, 0, (scores == p).sum(axis=1) - 1)
    return above, tied


def _expected(scores: np.ndarray, pos: np.ndarray, gain) -> np.ndarray:
    """E[gain(rank)] with rank uniform over above+1 .. above+tied+1 (ranks are 1-based)."""
    above, tied = _rank_bounds(scores, pos)
    return _expected_from(above, tied, scores.shape[1], gain)


def _expected_from(above: np.ndarray, tied: np.ndarray, n: int, gain) -> np.ndarray:
    """E[gain(rank)] from (candidates strictly above, tied excluding itself); n >= every
    rank."""
    above, tied = np.asarray(above, dtype=np.int64), np.asarray(tied, dtype=np.int64)
    ranks = np.arange(1, n + 1, dtype=np.float64)
    g = gain(ranks)  # gain for each possible rank
    cum = np.concatenate([[0.0], np.cumsum(g)])
    lo, hi = above, above + tied + 1  # ranks lo+1 .. hi
    return (cum[hi] - cum[lo]) / (tied + 1)


def ndcg_at_k(scores: np.ndarray, pos: np.ndarray, k: int) -> np.ndarray:
    """Per-user NDCG@k with a single relevant item (ideal DCG = 1)."""
    return _expected(scores, pos, lambda r: np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0))


def hr_at_k(scores: np.ndarray, pos: np.ndarray, k: int) -> np.ndarray:
    """Per-user hit rate at k."""
    return _expected(scores, pos, lambda r: (r <= k).astype(np.float64))


def mrr(scores: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Per-user reciprocal rank."""
    return _expected(scores, pos, lambda r: 1.0 / r)


def _gain(name: str):
    base, k = parse_metric(name)
    if base == "mrr":
        return lambda r: 1.0 / r
    if base == "hr":
        return lambda r: (r <= k).astype(np.float64)
    return lambda r: np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0)


def from_ranks(name: str, above: np.ndarray, tied: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Per-user values of metric `name` from each positive's rank bounds: `above`
    candidates scored strictly higher, `tied` others scored equal, `n` candidates in all
    (per user: full ranking gives each user their own count). The same tie rule and gains
    as `compute`, which is this on a score matrix; an abstention is above = n - 1, tied = 0."""
    above, tied, n = (np.asarray(x, dtype=np.int64) for x in (above, tied, n))
    if ((above < 0) | (tied < 0) | (above + tied + 1 > n)).any():
        raise ValueError("rank bounds outside 1..n")
    return _expected_from(above, tied, int(n.max(initial=1)), _gain(name))


def parse_metric(name: str) -> tuple[str, int | None]:
    """'NDCG@3' -> ('ndcg', 3); 'MRR' -> ('mrr', None)."""
    base, _, k = name.partition("@")
    base = base.strip().lower()
    if base not in {"ndcg", "hr", "mrr"} or (base != "mrr" and not k.isdigit()):
        raise ValueError(f"unknown metric {name!r}; use NDCG@k, HR@k or MRR")
    return base, int(k) if k else None


def compute(name: str, scores: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Per-user values of the metric called `name` (e.g. 'NDCG@1')."""
    base, k = parse_metric(name)
    if base == "mrr":
        return mrr(scores, pos)
    return (ndcg_at_k if base == "ndcg" else hr_at_k)(scores, pos, k)
