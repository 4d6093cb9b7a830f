"""`bench protocol build`: from a raw dataset to the protocol files every system ranks.

Pipeline: load (the dataset's spec) -> clean titles -> drop repeated (user, item) pairs ->
seeded user-disjoint general/specific partition -> k-core each part -> chronological
order -> split (the setting's spec) -> sample 1 + `negatives` candidates for validation
and test -> write. With `general_from`, every user of the dataset is a target user and
the general corpus comes from those datasets, overlap removed (protocols.general_corpus).
Options and their defaults: protocols.options.ProtocolOptions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from protocols import filtering, general_corpus, settings, splits
from protocols.datasets import load_dataset, source_files, source_root
from protocols.digest import file_sha256
from protocols.errors import OptionError, OutputError, ProtocolError, SettingInfeasible
from protocols.files import (
    FILES,
    POOL_FILE,
    PROTOCOL_FORMAT,
    candidates_sha256,
    check_protocol_out,
    overlapping,
)
from protocols.interactions import Interactions
from protocols.options import ProtocolOptions
from protocols.sampling import candidate_negatives, candidate_rows
from protocols.settings import SettingSpec
from protocols.store import atomic_dir

FORMAT = PROTOCOL_FORMAT


def _quoted(ids: np.ndarray) -> np.ndarray:
    return np.array([json.dumps(str(x), ensure_ascii=False) for x in ids], dtype=object)


def _seq_lines(users_q: np.ndarray, items_q: np.ndarray, rag: splits.Ragged,
               targets: list[np.ndarray] | None) -> str:
    out = []
    for n, u in enumerate(rag.users):
        seq = ", ".join(items_q[rag.row(n)])
        line = f'{{"user": {users_q[u]}, "items": [{seq}]'
        if targets is not None:
            line += f', "targets": [{", ".join(map(str, targets[n].tolist()))}]'
        out.append(line + "}\n")
    return "".join(out)


def _cand_lines(users_q, items_q, part: splits.EvalPart, cands: np.ndarray) -> str:
    return "".join(
        f'{{"user": {users_q[u]}, "positive": {items_q[p]}, '
        f'"candidates": [{", ".join(items_q[row])}]}}\n'
        for u, p, row in zip(part.users, part.positives, cands, strict=True)
    )


def _full_lines(users_q, items_q, part: splits.EvalPart, seen: np.ndarray, n_items: int
                ) -> str:
    """Full-ranking test rows: the user, the positive, and the pool items the user
    interacted with (other than the positive), which are not candidates."""
    in_pool = np.zeros(n_items, dtype=bool)
    in_pool[part.pool] = True
    s_user, s_item = seen // n_items, seen % n_items
    keep = in_pool[s_item]
    s_user, s_item = s_user[keep], s_item[keep]
    bounds = np.searchsorted(s_user, np.stack([part.users, part.users + 1]))
    out = []
    for u, p, lo, hi in zip(part.users, part.positives, bounds[0], bounds[1], strict=True):
        excl = s_item[lo:hi]
        excl = excl[excl != p]
        out.append(f'{{"user": {users_q[u]}, "positive": {items_q[p]}, '
                   f'"exclude": [{", ".join(items_q[excl])}]}}\n')
    return "".join(out)


def _general_ragged(general: Interactions, drop_items: set[str]
                    ) -> tuple[splits.Ragged, np.ndarray]:
    """General corpus as ragged rows (users with at least 2 items), `drop_items` removed."""
    keep = np.ones(len(general), dtype=bool)
    if drop_items:
        banned = np.array([i in drop_items for i in general.item_ids], dtype=bool)
        keep = ~banned[general.item]
    lengths = np.bincount(general.user[keep], minlength=len(general.user_ids))
    keep &= lengths[general.user] >= 2
    rag = splits._ragged(general.user, general.item, keep)
    return rag, general.item_ids


def source_hashes(dataset: str, data_path: str | Path | None) -> dict[str, str]:
    """sha256 of every raw file a build of `dataset` reads: the manifest's `source`, and
    the part of a protocol's cache key that covers the data."""
    return {p.name: file_sha256(p) for p in source_files(dataset, data_path)
            if p.suffix not in (".kg", ".link")}


def general_hashes(options: ProtocolOptions, general_paths: Mapping[str, str | Path] | None
                   ) -> dict[str, dict[str, str]]:
    """sha256 of the raw files of every `general_from` dataset (the manifest's
    `general_source`; empty for the default corpus)."""
    return {s.name: source_hashes(s.name, s.path)
            for s in general_corpus.sources(options.general_from, general_paths)}


def check_request(setting: str, seed: int, options: ProtocolOptions) -> SettingSpec:
    """The setting's spec, after the range checks (before any data is read: a bad value is
    an error, never a default)."""
    spec = settings.get(setting)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise OptionError(f"--seed must be an integer from 0 to 2**32-1, got {seed!r}")
    options.check()
    return spec


def build_protocol(dataset: str, setting: str, seed: int, out: str | Path, *,
                   data_path: str | Path | None = None, options: ProtocolOptions | None = None,
                   general_paths: Mapping[str, str | Path] | None = None,
                   **overrides: Any) -> dict[str, Any]:
    """Build one protocol directory and return its manifest. `options` (default
    ProtocolOptions()) with `overrides` (kcore=..., cold_fraction=...) applied;
    `general_paths` gives the directory of a `general_from` dataset (default: its own).

    `out` must be absent, empty, or a protocol directory built before (it is replaced);
    it may not overlap any input directory."""
    opts = replace(options or ProtocolOptions(), **overrides)
    spec = check_request(setting, seed, opts)
    out = Path(out)
    root = source_root(dataset, data_path)
    srcs = general_corpus.sources(opts.general_from, general_paths)
    for r in (root, *(source_root(s.name, s.path) for s in srcs)):
        if overlapping(r, out):
            raise OutputError(f"--out {out} overlaps the input directory {r}; write the "
                              "protocol somewhere else")
    for s in srcs:
        if s.name == dataset or overlapping(source_root(s.name, s.path), root):
            raise OptionError(f"--general-from {s.name}: the domain-general corpus must come "
                              f"from another dataset than {dataset} (omit --general-from to "
                              "split the dataset's users)")
    check_protocol_out(out)
    raw = load_dataset(dataset, data_path)
    # sorted once here; every later step selects with masks and so keeps this order
    inter = filtering.drop_repeats(filtering.chronological(filtering.clean_titles(raw)))
    if srcs:  # every user is a target user; the corpus comes from elsewhere (below)
        general, target = None, inter
    else:
        general, target = filtering.split_users(inter, opts.general_fraction, seed)
    if opts.max_users is not None:
        if general is not None:
            general = filtering.sample_users(general, opts.max_users, seed)
        target = filtering.sample_users(target, opts.max_users, seed)
    if general is not None:
        general = filtering.k_core(general, opts.kcore)
    target = filtering.k_core(target, opts.kcore)
    if len(target) == 0:
        raise ProtocolError(f"no interactions left after {opts.kcore}-core filtering of "
                            f"{dataset}")
    split = spec.split(target, seed, opts)

    n_items = len(target.item_ids)
    seen = np.unique(target.user.astype(np.int64) * n_items + target.item)
    negs = {}
    # full ranking: validation is sampled as in the default protocol (the same file), the
    # test pool is written once (below)
    sampled = (("valid", split.valid, 201),) if opts.full_ranking else (
        ("valid", split.valid, 201), ("test", split.test, 202))
    for name, part, stream in sampled:
        rng = np.random.default_rng([seed, stream])
        neg = candidate_negatives(rng, part.users, part.pool, seen, n_items,
                                  opts.sampled_negatives, target.user_ids)
        negs[name] = candidate_rows(rng, part.positives, neg)
    if opts.full_ranking:
        if len(split.test.pool) < 2:
            raise SettingInfeasible(f"the test pool has {len(split.test.pool)} item(s); "
                                    "full ranking needs at least 2")
        negs["test"] = np.asarray(split.test.pool)[None, :]  # titles: every pool item

    cold_ids = set(target.item_ids[split.cold_items]) if split.cold_items is not None else set()
    titles = inter.titles
    external = None
    if srcs:
        external = general_corpus.external_general(
            srcs, target, cold_ids, opts.kcore, opts.max_users, seed, load_dataset, dataset)
        general, titles = external.general, {**titles, **external.titles}
    grag, gitem_ids = _general_ragged(general, cold_ids)
    if external is not None:
        general_corpus.check_size(len(grag.users), external.per_source)

    users_q = _quoted(target.user_ids)
    items_q = _quoted(target.item_ids)
    texts = {
        "train.jsonl": _seq_lines(users_q, items_q, split.train, split.targets),
        "general.jsonl": _seq_lines(_quoted(general.user_ids), _quoted(gitem_ids), grag, None),
        "valid_candidates.jsonl": _cand_lines(users_q, items_q, split.valid, negs["valid"]),
        "test_candidates.jsonl": (
            _full_lines(users_q, items_q, split.test, seen, n_items) if opts.full_ranking
            else _cand_lines(users_q, items_q, split.test, negs["test"])),
    }
    if opts.full_ranking:
        texts[POOL_FILE] = "".join(f'{{"item": {items_q[i]}}}\n' for i in split.test.pool)
    mentioned = set(target.item_ids[np.unique(np.concatenate(
        [split.train.items, negs["valid"].ravel(), negs["test"].ravel()]))])
    mentioned |= set(gitem_ids[np.unique(grag.items)])
    ordered = sorted(mentioned, key=lambda i: (len(i), i))
    texts["items.jsonl"] = "".join(
        json.dumps({"item": i, "title": titles[i]}, ensure_ascii=False) + "\n" for i in ordered)

    counts = {
        "items": len(ordered), "target_users": len(target.user_ids),
        "target_items": n_items, "target_interactions": len(target),
        "train_users": len(split.train.users), "train_interactions": len(split.train.items),
        "general_users": len(grag.users), "general_interactions": len(grag.items),
        "valid_users": len(split.valid.users), "test_users": len(split.test.users),
        **{k: int(v) for k, v in inter.stats.items()}, **split.counts,
        **({f"general_{k}": v for k, v in external.counts.items()} if external else {}),
        **({"test_pool_items": len(split.test.pool)} if opts.full_ranking else {}),
    }
    manifest: dict[str, Any] = {
        "format": FORMAT, "dataset": dataset, "setting": setting, "seed": seed,
        "split_version": spec.version, "options": opts.as_dict(),
        "source": source_hashes(dataset, data_path),
        "counts": counts,
    }
    if external is not None:
        manifest["general_source"] = general_hashes(opts, general_paths)
        manifest["general_sources"] = external.per_source
        manifest["general_overlap_rule"] = general_corpus.OVERLAP_RULE
    with atomic_dir(out, check=check_protocol_out) as tmp:
        for name in texts:
            (tmp / name).write_text(texts[name], encoding="utf-8")
        manifest["files"] = {name: file_sha256(tmp / name) for name in (*FILES, *(
            (POOL_FILE,) if POOL_FILE in texts else ()))}
        manifest["candidates_sha256"] = candidates_sha256(manifest["files"])
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
