"""Cleaning steps between loading and splitting, all vectorized over int codes.

Order of events: a user's events are sorted by timestamp; equal timestamps keep the
order of the source file (a stable sort on the line number). That tie-break is part of
the protocol, so two runs over the same file always produce the same sequences.
"""

from __future__ import annotations

import numpy as np

from protocols.interactions import Interactions
from protocols.titles import normalize_title, unique_titles


def clean_titles(inter: Interactions) -> Interactions:
    """Normalize titles, drop items without one (counted), make titles unique."""
    raw = {item: normalize_title(inter.titles.get(item)) for item in inter.item_ids}
    titled = {item: t for item, t in raw.items() if t}
    has_title = np.array([item in titled for item in inter.item_ids], dtype=bool)
    keep = has_title[inter.item]
    out = inter.select(keep)
    out.titles = unique_titles(titled)
    out.stats["items_without_title"] = int((~has_title).sum())
    out.stats["interactions_without_title"] = int((~keep).sum())
    return out


def chronological(inter: Interactions) -> Interactions:
    """Sort by (user, timestamp, source line)."""
    order = np.lexsort((inter.row, inter.timestamp, inter.user))
    return inter.select(order)


def drop_repeats(inter: Interactions) -> Interactions:
    """Keep each (user, item) pair's earliest event; a ranking target must be new to the user.
    Expects chronological order, which it keeps."""
    key = inter.user.astype(np.int64) * len(inter.item_ids) + inter.item
    _, first = np.unique(key, return_index=True)  # index of the first occurrence
    keep = np.zeros(len(key), dtype=bool)
    keep[first] = True
    out = inter.select(keep)
    out.stats["repeated_interactions"] = int((~keep).sum())
    return out


def k_core(inter: Interactions, k: int) -> Interactions:
    """Iteratively drop users and items with fewer than k events."""
    keep = np.ones(len(inter), dtype=bool)
    if k > 1:
        while True:
            u_count = np.bincount(inter.user[keep], minlength=len(inter.user_ids))
            i_count = np.bincount(inter.item[keep], minlength=len(inter.item_ids))
            ok = keep & (u_count[inter.user] >= k) & (i_count[inter.item] >= k)
            if ok.sum() == keep.sum():
                break
            keep = ok
    return inter.select(keep).compact()


def split_users(inter: Interactions, fraction: float, seed: int
                ) -> tuple[Interactions, Interactions]:
    """Seeded user-disjoint partition: (general part, specific part)."""
    n = len(inter.user_ids)
    rng = np.random.default_rng([seed, 101])
    general_users = rng.permutation(n)[: int(round(fraction * n))]
    is_general = np.zeros(n, dtype=bool)
    is_general[general_users] = True
    mask = is_general[inter.user]
    return inter.select(mask).compact(), inter.select(~mask).compact()


def sample_users(inter: Interactions, max_users: int, seed: int) -> Interactions:
    """Keep a seeded random subset of users (the smoke profile's cut)."""
    n = len(inter.user_ids)
    if max_users >= n:
        return inter
    rng = np.random.default_rng([seed, 102])
    chosen = np.zeros(n, dtype=bool)
    chosen[rng.choice(n, size=max_users, replace=False)] = True
    return inter.select(chosen[inter.user]).compact()


def user_bounds(user: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Start offset and length of each user's run in user-sorted arrays."""
    lengths = np.bincount(user, minlength=n_users)
    starts = np.zeros(n_users, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return starts, lengths
