"""The one place candidates are sampled.

Each user's negatives are drawn uniformly without replacement from a pool, excluding
every item the user ever interacted with. Vectorized rejection sampling: draw m ids per
user, drop excluded ones and repeats, keep the first k survivors in draw order (which is a
uniform k-subset); users with fewer than k survivors redraw with a larger m.
"""

from __future__ import annotations

import numpy as np

from protocols.errors import SettingInfeasible
from protocols.options import ProtocolOptions


def _first_valid(draws: np.ndarray, excluded: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """First k distinct non-excluded draws per row (in draw order) and a row-success mask."""
    order = np.argsort(draws, axis=1, kind="stable")
    s = np.take_along_axis(draws, order, axis=1)
    dup_sorted = np.zeros_like(s, dtype=bool)
    dup_sorted[:, 1:] = s[:, 1:] == s[:, :-1]
    dup = np.empty_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    valid = ~(dup | excluded)
    ok = valid.sum(axis=1) >= k
    pick = np.argsort(~valid, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(draws, pick, axis=1), ok


def candidate_negatives(
    rng: np.random.Generator,
    users: np.ndarray,
    pool: np.ndarray,
    seen_keys: np.ndarray,
    n_items: int,
    k: int = ProtocolOptions.negatives,
    user_names: np.ndarray | None = None,
) -> np.ndarray:
    """(len(users), k) item codes.

    users: user code per output row; pool: sorted item codes allowed as negatives;
    seen_keys: sorted int64 keys user*n_items+item of every item each user interacted with.
    """
    users = np.asarray(users, dtype=np.int64)
    pool = np.asarray(pool, dtype=np.int64)
    in_pool = np.zeros(n_items, dtype=bool)
    in_pool[pool] = True
    seen_u = seen_keys // n_items
    seen_in_pool = np.bincount(seen_u[in_pool[seen_keys % n_items]],
                               minlength=int(users.max(initial=-1)) + 1)
    avail = len(pool) - seen_in_pool[users]
    short = np.flatnonzero(avail < k)
    if len(short):
        who = user_names[users[short[0]]] if user_names is not None else users[short[0]]
        raise SettingInfeasible(
            f"only {avail[short[0]]} items in the negative pool (of {len(pool)}) are unseen by "
            f"user {who}; {k} negatives are needed ({len(short)} users affected)")
    # draws per row: enough for k survivors with a margin, rounded up to a power of two
    need = np.ceil((k + 8) * len(pool) / avail * 1.5).astype(np.int64)
    m = np.maximum(64, 2 ** np.ceil(np.log2(need)).astype(np.int64))
    out = np.empty((len(users), k), dtype=np.int64)
    pending = np.arange(len(users))
    while len(pending):
        nxt = []
        for size in np.unique(m[pending]):
            rows = pending[m[pending] == size]
            draws = pool[rng.integers(0, len(pool), size=(len(rows), int(size)))]
            keys = users[rows, None] * n_items + draws
            pos = np.searchsorted(seen_keys, keys)
            pos[pos == len(seen_keys)] = 0
            excluded = seen_keys[pos] == keys if len(seen_keys) else np.zeros_like(keys, bool)
            picked, ok = _first_valid(draws, excluded, k)
            out[rows[ok]] = picked[ok]
            m[rows[~ok]] *= 2
            nxt.append(rows[~ok])
        pending = np.sort(np.concatenate(nxt)) if nxt else pending[:0]
    return out


def candidate_rows(rng: np.random.Generator, positives: np.ndarray, negatives: np.ndarray
                   ) -> np.ndarray:
    """Positive + negatives per row, shuffled with the seed: (rows, k+1) item codes."""
    cands = np.concatenate([np.asarray(positives)[:, None], negatives], axis=1)
    order = np.argsort(rng.random(cands.shape), axis=1, kind="stable")
    return np.take_along_axis(cands, order, axis=1)
