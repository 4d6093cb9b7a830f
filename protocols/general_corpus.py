"""A domain-general corpus taken from other datasets (`--general-from NAME[:PATH]`).

The paper trains its general LoRA on other datasets than the target (seven Amazon
categories for Beauty, Toys and Sports; MovieLens-10M for MovieLens-1M), "removing the
overlapping portions". Here each source is loaded and cleaned as the target is (titles,
repeated pairs, chronological order, `max_users`, k-core), then the overlap is removed:

- items: across datasets an item is identified by its title, the text every system sees:
  a source item with a target item's title is that item. In the cold setting, every
  interaction on a cold item is removed. Nothing is removed because it is a target
  validation or test positive (that would make every candidate still found in the corpus
  a known negative: a label leak).
- users, by id: a source user whose id is a target user's id, where both datasets' ids
  are one space (`DatasetSpec.user_id_space`: Amazon reviewer ids are; MovieLens ids
  number each dataset's users separately, so an equal id there is another person);
- users, by behaviour, whatever the ids: a source user who shares at least
  `min(SHARED_EVENTS, ceil(half the shorter history))` identical (title, timestamp)
  events with one target user, and at least MIN_SHARED_EVENTS, is that person (a rating
  given to the same film in the same second, five times over, is no coincidence; see
  `same_people`).

Every removal is counted for the manifest, and a corpus left with fewer than
`MIN_GENERAL_USERS` users is an error naming the sources and the counts. Users become
`<source>:<id>` (one sequence per source); a source item keeps its target id, or becomes
`<source>:<id>` of the first source with its title, so titles stay unique across the
protocol's items.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protocols import filtering
from protocols.datasets import user_id_space
from protocols.errors import OptionError, ProtocolError
from protocols.interactions import Interactions

SHARED_EVENTS = 5  # identical (title, timestamp) events that make two users one person
MIN_SHARED_EVENTS = 3  # never fewer, whatever the histories' length (a --kcore below 5)
# versions the overlap removal (2: by id within one id space, by behaviour always); a
# protocol with a `--general-from` corpus built by another version is rebuilt
OVERLAP_RULE = 2
MIN_GENERAL_USERS = 10  # fewer users left: an overlap or path mistake, not a corpus


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


def same_people(source: Interactions, source_items: np.ndarray, target: Interactions,
                min_shared: int = SHARED_EVENTS) -> np.ndarray:
    """For each source user, whether they are a target user by behaviour: they share at
    least `min(min_shared, ceil(n / 2))` identical (item, timestamp) events with one
    target user, n the shorter of the two histories, and never fewer than
    MIN_SHARED_EVENTS (two reviewers of one product on the same day are no proof).
    `source_items[c]` is source item c's id in the target's id space (a target item with
    its title), else any other id."""
    import pandas as pd

    n_src = len(source.user_ids)
    found = np.zeros(n_src, dtype=bool)
    if len(source) == 0 or len(target) == 0:
        return found
    src = pd.DataFrame({"item": source_items[source.item], "ts": source.timestamp,
                        "su": source.user})
    tgt = pd.DataFrame({"item": target.item_ids[target.item], "ts": target.timestamp,
                        "tu": target.user})
    pairs = src.merge(tgt, on=["item", "ts"]).groupby(["su", "tu"]).size()
    if pairs.empty:
        return found
    su = pairs.index.get_level_values("su").to_numpy()
    tu = pairs.index.get_level_values("tu").to_numpy()
    shorter = np.minimum(np.bincount(source.user, minlength=n_src)[su],
                         np.bincount(target.user, minlength=len(target.user_ids))[tu])
    need = np.clip(np.ceil(shorter / 2), MIN_SHARED_EVENTS, min_shared)
    found[su[pairs.to_numpy() >= need]] = True
    return found


def external_general(srcs: Sequence[Source], target: Interactions, cold_items: set[str],
                     kcore: int, max_users: int | None, seed: int,
                     load: Callable[[str, str | None], Interactions],
                     target_dataset: str | None = None) -> External:
    """Load, clean and combine the sources; remove the overlap with `target` (its users, by
    id where the id spaces agree and by behaviour always, and `cold_items`, target item
    ids), counting each removal; `target_dataset` names the target's id space."""
    target_space = user_id_space(target_dataset) if target_dataset else None
    target_users = set(target.user_ids.tolist())
    title_id = {target.titles[i]: i for i in target.item_ids}
    ids: dict[str, int] = {}  # combined item id -> code
    titles: dict[str, str] = {}  # combined item id -> title (new ids only)
    user_ids: list[np.ndarray] = []
    cols: dict[str, list[np.ndarray]] = {"user": [], "item": [], "timestamp": []}
    counts = dict.fromkeys(("users_removed_by_id", "users_removed_by_behaviour",
                            "interactions_removed_target_users",
                            "interactions_removed_cold_items"), 0)
    per_source = []
    for src in srcs:
        inter = filtering.drop_repeats(filtering.chronological(filtering.clean_titles(
            load(src.name, src.path))))
        if max_users is not None:
            inter = filtering.sample_users(inter, max_users, seed)
        inter = filtering.k_core(inter, kcore)
        mapped = [title_id.setdefault(inter.titles[i], f"{src.name}:{i}")
                  for i in inter.item_ids]
        titles.update({c: inter.titles[i] for c, i in zip(mapped, inter.item_ids, strict=True)
                       if c not in target.titles})
        code = np.array([ids.setdefault(c, len(ids)) for c in mapped], dtype=np.int64)
        space = user_id_space(src.name)
        by_id = np.array([space is not None and space == target_space and u in target_users
                          for u in inter.user_ids], dtype=bool)
        by_behaviour = same_people(inter, np.array(mapped, dtype=object), target) & ~by_id
        same_user = by_id | by_behaviour
        present = np.zeros(len(inter.user_ids), dtype=bool)
        present[np.unique(inter.user)] = True
        on_cold = np.array([c in cold_items for c in mapped], dtype=bool)[inter.item]
        drop_user = same_user[inter.user]
        removed = {"users_removed_by_id": int((by_id & present).sum()),
                   "users_removed_by_behaviour": int((by_behaviour & present).sum()),
                   "interactions_removed_target_users": int(drop_user.sum()),
                   "interactions_removed_cold_items": int((~drop_user & on_cold).sum())}
        for k, v in removed.items():
            counts[k] += v
        per_source.append({"name": src.name, "users": len(inter.user_ids),
                           "items": len(inter.item_ids), "interactions": len(inter), **removed})
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


def check_size(n_users: int, per_source: Sequence[Mapping[str, int | str]]) -> None:
    """Refuse a `--general-from` corpus with fewer than MIN_GENERAL_USERS users (of two or
    more events): the domain-general LoRA would learn from nothing, and the LLM rows that
    need it would fail later, far from the cause."""
    if n_users >= MIN_GENERAL_USERS:
        return
    shown = "; ".join(
        f"{s['name']}: {s['users']} users after cleaning, {s['users_removed_by_id']} "
        f"removed as target users by id, {s['users_removed_by_behaviour']} by behaviour, "
        f"{s['interactions_removed_cold_items']} interactions on cold items removed"
        for s in per_source)
    raise ProtocolError(
        f"the domain-general corpus has {n_users} users with two or more interactions from "
        f"--general-from ({shown}); at least {MIN_GENERAL_USERS} are needed. A source that "
        "is the target's "
        "own data (or a copy of it) loses every user to the overlap removal: name another "
        "dataset, or check its path")
