"""A domain-general corpus taken from other datasets (`--general-from NAME[:PATH]`).

The paper trains its general LoRA on other datasets than the target (seven Amazon
categories for Beauty, Toys and Sports; MovieLens-10M for MovieLens-1M), "removing the
overlapping portions". Here each source is loaded and cleaned as the target is (titles,
repeated pairs, chronological order, `max_users`, k-core), then the overlap is removed:

- users: a source user whose id is a target user's id (Amazon reviewer ids are global;
  for unrelated id spaces this only removes a few extra users);
- items: across datasets an item is identified by its title, the text every system sees:
  a source item with a target item's title is that item. Interactions on the target's
  validation and test positives (and, in the cold setting, on its cold items) are removed.

Every removal is counted for the manifest. Users become `<source>:<id>` (one sequence
per source); a source item keeps its target id, or becomes `<source>:<id>` of the first
source with its title, so titles stay unique across the protocol's items.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protocols import filtering
from protocols.errors import OptionError
from protocols.interactions import Interactions


@dataclass(frozen=True)
class Source:
    name: str
    path: str | None = None  # its directory (None: the dataset's default location)


def parse(values: Iterable[str]) -> tuple[tuple[str, ...], dict[str, str]]:
    """`NAME[:PATH]` values, each possibly comma-separated -> (names in order, paths)."""
    names: list[str] = []
    paths: dict[str, str] = {}
    for value in values:
        for item in (v.strip() for v in value.split(",")):
            if not item:
                continue
            name, _, path = item.partition(":")
            if not name:
                raise OptionError(f"--general-from {item!r}: give NAME or NAME:PATH")
            if name in names:
                raise OptionError(f"--general-from names {name!r} more than once")
            names.append(name)
            if path:
                paths[name] = path
    return tuple(names), paths


def sources(names: Sequence[str], paths: Mapping[str, str | Path] | None) -> list[Source]:
    paths = paths or {}
    return [Source(n, str(paths[n]) if n in paths else None) for n in names]


@dataclass
class External:
    """The combined corpus (ids as written), the titles of its new items, the counts."""

    general: Interactions
    titles: dict[str, str]
    counts: dict[str, int]
    per_source: list[dict[str, int | str]]


def external_general(srcs: Sequence[Source], target: Interactions, cold_items: set[str],
                     kcore: int, max_users: int | None, seed: int,
                     load: Callable[[str, str | None], Interactions]) -> External:
    """Load, clean and combine the sources; remove the overlap with `target` (its users, and
    `cold_items`, target item ids), counting each removal.

    Nothing is removed because it is a validation or test positive: that would make every
    candidate still found in the corpus a known negative (a label leak). Other users'
    interactions with target items stay, as in the default user-partition corpus."""
    target_users = set(target.user_ids.tolist())
    title_id = {target.titles[i]: i for i in target.item_ids}
    ids: dict[str, int] = {}  # combined item id -> code
    titles: dict[str, str] = {}  # combined item id -> title (new ids only)
    user_ids: list[np.ndarray] = []
    cols: dict[str, list[np.ndarray]] = {"user": [], "item": [], "timestamp": []}
    counts = dict.fromkeys(("users_removed_target", "interactions_removed_target_users",
                            "interactions_removed_cold_items"), 0)
    per_source = []
    for src in srcs:
        inter = filtering.drop_repeats(filtering.chronological(filtering.clean_titles(
            load(src.name, src.path))))
        if max_users is not None:
            inter = filtering.sample_users(inter, max_users, seed)
        inter = filtering.k_core(inter, kcore)
        per_source.append({"name": src.name, "users": len(inter.user_ids),
                           "items": len(inter.item_ids), "interactions": len(inter)})
        mapped = [title_id.setdefault(inter.titles[i], f"{src.name}:{i}")
                  for i in inter.item_ids]
        titles.update({c: inter.titles[i] for c, i in zip(mapped, inter.item_ids, strict=True)
                       if c not in target.titles})
        code = np.array([ids.setdefault(c, len(ids)) for c in mapped], dtype=np.int64)
        same_user = np.array([u in target_users for u in inter.user_ids], dtype=bool)
        on_cold = np.array([c in cold_items for c in mapped], dtype=bool)[inter.item]
        drop_user = same_user[inter.user]
        counts["users_removed_target"] += int(same_user[np.unique(inter.user)].sum())
        counts["interactions_removed_target_users"] += int(drop_user.sum())
        counts["interactions_removed_cold_items"] += int((~drop_user & on_cold).sum())
        keep = ~(drop_user | on_cold)
        offset = sum(len(u) for u in user_ids)
        user_ids.append(np.array([f"{src.name}:{u}" for u in inter.user_ids], dtype=object))
        cols["user"].append(inter.user[keep].astype(np.int64) + offset)
        cols["item"].append(code[inter.item[keep]])
        cols["timestamp"].append(inter.timestamp[keep])
    user = np.concatenate(cols["user"]) if cols["user"] else np.zeros(0, np.int64)
    general = Interactions(
        "general", np.concatenate(user_ids) if user_ids else np.zeros(0, object),
        np.array(list(ids), dtype=object), user.astype(np.int32),
        np.concatenate(cols["item"]).astype(np.int32) if cols["item"] else user.astype(np.int32),
        np.concatenate(cols["timestamp"]) if cols["timestamp"] else np.zeros(0),
        np.arange(len(user), dtype=np.int64), {**target.titles, **titles})
    return External(filtering.chronological(general).compact(), titles, counts, per_source)
