"""Warm, new-item (cold) and few-shot splits over chronologically sorted sequences.

A training sample is one target position t >= 1 of a user's training sequence: it
predicts items[t] from items[:t]. Few-shot settings keep a seeded p% of these samples
(nested: 10% inside 20% inside 30%); the full sequence is still written, and the kept
positions are listed in "targets", so sequence models and prompts see whole histories
but learn only from the kept targets. Which setting uses which split is said by its
spec (protocols.settings).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from protocols.errors import ProtocolError, SettingInfeasible
from protocols.filtering import user_bounds
from protocols.interactions import Interactions
from protocols.options import ProtocolOptions


@dataclass
class Ragged:
    """Per-user item sequences in CSR form (users in ascending code order)."""

    users: np.ndarray
    indptr: np.ndarray
    items: np.ndarray

    def row(self, n: int) -> np.ndarray:
        return self.items[self.indptr[n]: self.indptr[n + 1]]


@dataclass
class EvalPart:
    """Users with one held-out positive each and the pool their negatives come from."""

    users: np.ndarray
    positives: np.ndarray
    pool: np.ndarray


@dataclass
class Split:
    train: Ragged
    valid: EvalPart
    test: EvalPart
    targets: list[np.ndarray] | None = None  # few-shot: kept target positions per train row
    cold_items: np.ndarray | None = None
    counts: dict[str, int] = field(default_factory=dict)


def _ragged(user: np.ndarray, item: np.ndarray, keep: np.ndarray) -> Ragged:
    u, i = user[keep], item[keep]
    users, counts = np.unique(u, return_counts=True)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    return Ragged(users, indptr, i)


def warm(inter: Interactions) -> Split:
    """Leave-one-out: last item test, second-to-last validation, the rest training."""
    n_users = len(inter.user_ids)
    starts, lengths = user_bounds(inter.user, n_users)
    short = np.flatnonzero(lengths < 3)
    if len(short):
        raise ProtocolError(
            f"{len(short)} users have fewer than 3 interactions after filtering (e.g. user "
            f"{inter.user_ids[short[0]]}); leave-one-out needs 3: raise --kcore to 3 or more")
    last = starts + lengths - 1
    keep = np.ones(len(inter), dtype=bool)
    keep[last] = False
    keep[last - 1] = False
    all_items = np.arange(len(inter.item_ids))
    users = np.arange(n_users)
    return Split(
        train=_ragged(inter.user, inter.item, keep),
        valid=EvalPart(users, inter.item[last - 1], all_items),
        test=EvalPart(users, inter.item[last], all_items),
    )


def fewshot(inter: Interactions, percent: int, seed: int) -> Split:
    """Warm split with a seeded, nested percent of training samples kept."""
    return thin(warm(inter), percent, seed)


def fewshot_cold(inter: Interactions, percent: int, seed: int, fraction: float,
                 k: int = ProtocolOptions.negatives) -> Split:
    """New-item split with a seeded, nested percent of its training samples kept
    (validation and test as in `cold`)."""
    return thin(cold(inter, fraction, seed, k), percent, seed)


def thin(split: Split, percent: int, seed: int) -> Split:
    """Keep a seeded `percent` of the split's training samples; the rest is untouched."""
    tr = split.train
    lengths = np.diff(tr.indptr)
    n_samples = np.maximum(lengths - 1, 0)
    total = int(n_samples.sum())
    # one uniform key per sample in (user, position) order; the p% smallest keys are kept,
    # so a smaller percentage is always a subset of a larger one
    keys = np.random.default_rng([seed, 103]).random(total)
    rank = np.empty(total, dtype=np.int64)
    rank[np.argsort(keys, kind="stable")] = np.arange(total)
    kept = rank < int(np.ceil(percent * total / 100))
    bounds = np.concatenate([[0], np.cumsum(n_samples)])
    split.targets = [
        np.flatnonzero(kept[bounds[n]: bounds[n + 1]]) + 1 for n in range(len(tr.users))
    ]
    split.counts = {**split.counts, "training_samples_total": total,
                    "training_samples_kept": int(kept.sum())}
    return split


def cold(inter: Interactions, fraction: float, seed: int,
         k: int = ProtocolOptions.negatives) -> Split:
    """New-item split, in time order.

    A seeded `fraction` of the items is made cold: removed from every training and
    validation sequence (and, by the caller, from the general corpus). A user with at least
    one cold interaction that follows two or more non-cold ones is a test user; the
    positive is the latest such cold item, and the user's non-cold events after it are
    left out, so training, validation and the test-time history all precede the positive
    (as in warm, where the test item is the last event). On what precedes, the last
    non-cold event is validation and the rest training. Every other user keeps all
    non-cold events (last = validation). Test negatives come from the cold pool (items
    unseen in training and validation) minus the user's own.

    `inter` must be in chronological order within each user (protocols.filtering).
    """
    n_items = len(inter.item_ids)
    n_cold = int(round(fraction * n_items))
    if n_cold < k + 1:
        raise SettingInfeasible(
            f"cold pool too small: {n_cold} cold items ({fraction:.0%} of {n_items}); at least "
            f"{k + 1} are needed for 1 positive + {k} negatives: raise --cold-fraction")
    rng = np.random.default_rng([seed, 104])
    cold_items = np.sort(rng.choice(n_items, size=n_cold, replace=False))
    is_cold = np.zeros(n_items, dtype=bool)
    is_cold[cold_items] = True
    ev_cold = is_cold[inter.item]
    n_users = len(inter.user_ids)
    n = len(inter)
    # non-cold events up to and including each event, within its user
    starts, _ = user_bounds(inter.user, n_users)
    warm_cum = np.cumsum(~ev_cold)
    before_user = np.zeros(n_users, dtype=np.int64)
    first = starts < n
    before_user[first] = warm_cum[starts[first]] - (~ev_cold[starts[first]])
    warm_upto = warm_cum - before_user[inter.user]
    # the test positive: the latest cold event with at least 2 non-cold events before it
    eligible = np.flatnonzero(ev_cold & (warm_upto >= 2))
    test_event = np.full(n_users, -1)
    np.maximum.at(test_event, inter.user[eligible], eligible)
    test_users = np.flatnonzero(test_event >= 0)
    if len(test_users) == 0:
        raise SettingInfeasible("no user interacted with a cold item after two others: "
                                "raise --cold-fraction")
    # a test user's events after the positive are left out of everything
    cutoff = np.full(n_users, n)
    cutoff[test_users] = test_event[test_users]
    in_time = np.arange(n) < cutoff[inter.user]
    later = ~in_time & ~ev_cold
    usable = ~ev_cold & in_time
    warm_len = np.bincount(inter.user[usable], minlength=n_users)
    ok_user = warm_len >= 2  # one training item and one validation item
    idx = np.flatnonzero(usable & ok_user[inter.user])
    last_warm = np.full(n_users, -1)
    np.maximum.at(last_warm, inter.user[idx], idx)  # -> validation
    keep = usable & ok_user[inter.user]
    keep[last_warm[ok_user]] = False
    valid_users = np.flatnonzero(ok_user)
    warm_items = np.flatnonzero(~is_cold)
    return Split(
        train=_ragged(inter.user, inter.item, keep),
        valid=EvalPart(valid_users, inter.item[last_warm[valid_users]], warm_items),
        test=EvalPart(test_users, inter.item[test_event[test_users]], cold_items),
        cold_items=cold_items,
        counts={"cold_items": n_cold, "users_dropped_too_few_warm": int((~ok_user).sum()),
                "cold_users_without_two_earlier_events": int(
                    np.setdiff1d(np.unique(inter.user[ev_cold]), test_users).size),
                "test_users_later_events_left_out": int(np.unique(inter.user[later]).size),
                "later_events_left_out": int(later.sum())},
    )
