"""The one normalized form every loader produces.

Ids stay strings (RecBole tokens, ASINs); inside, users and items are dense int32 codes
assigned in sorted id order, so codes do not depend on the order of lines in a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


def _factorize(values) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(values, pd.Series) and isinstance(values.dtype, pd.CategoricalDtype):
        cats = np.asarray(values.cat.categories.astype(str), dtype=object)
        order = np.argsort(cats, kind="stable")
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        codes = rank[values.cat.codes.to_numpy()]
        used = np.unique(codes)  # drop categories that never occur
        remap = np.full(len(order), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        return remap[codes], cats[order][used]
    codes, uniques = pd.factorize(pd.Series(values, dtype=object).astype(str), sort=True)
    return codes, np.asarray(uniques, dtype=object)


@dataclass
class Interactions:
    """Timestamped (user, item) events plus item titles.

    `row` keeps each event's position in its source file: it is the documented tie-break
    for equal timestamps (the earlier line comes first).
    """

    name: str
    user_ids: np.ndarray  # object array of str; index = user code
    item_ids: np.ndarray  # object array of str; index = item code
    user: np.ndarray  # int32 codes
    item: np.ndarray  # int32 codes
    timestamp: np.ndarray  # float64
    row: np.ndarray  # int64, source order
    titles: dict[str, str]  # item id -> raw title (normalized later)
    stats: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.user)

    @classmethod
    def from_columns(
        cls,
        name: str,
        users: pd.Series | np.ndarray,
        items: pd.Series | np.ndarray,
        timestamps: np.ndarray,
        titles: dict[str, str],
    ) -> Interactions:
        """Factorize string ids (sorted) into codes; categoricals are factorized on codes."""
        ucode, uids = _factorize(users)
        icode, iids = _factorize(items)
        return cls(
            name=name,
            user_ids=uids,
            item_ids=iids,
            user=ucode.astype(np.int32),
            item=icode.astype(np.int32),
            timestamp=np.asarray(timestamps, dtype=np.float64),
            row=np.arange(len(ucode), dtype=np.int64),
            titles=titles,
        )

    def select(self, mask: np.ndarray) -> Interactions:
        """Keep events where mask is true; codes and id tables are kept (use compact())."""
        return Interactions(
            self.name, self.user_ids, self.item_ids, self.user[mask], self.item[mask],
            self.timestamp[mask], self.row[mask], self.titles, dict(self.stats),
        )

    def compact(self) -> Interactions:
        """Drop ids with no events and renumber codes, still in sorted id order."""
        used_u = np.flatnonzero(np.bincount(self.user, minlength=len(self.user_ids)))
        used_i = np.flatnonzero(np.bincount(self.item, minlength=len(self.item_ids)))
        umap = np.full(len(self.user_ids), -1, dtype=np.int32)
        umap[used_u] = np.arange(len(used_u), dtype=np.int32)
        imap = np.full(len(self.item_ids), -1, dtype=np.int32)
        imap[used_i] = np.arange(len(used_i), dtype=np.int32)
        return Interactions(
            self.name, self.user_ids[used_u], self.item_ids[used_i], umap[self.user],
            imap[self.item], self.timestamp, self.row, self.titles, dict(self.stats),
        )
