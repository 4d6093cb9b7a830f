"""Small raw files in the paper's formats, for the paper profile's dry run.

`write_paper_data(root)` lays out `$MOLOREC_BENCH_DATA` as `bench data download` would:
MovieLens-1M and -10M `.dat` files (ML-1M's movies in Latin-1, ML-10M's in its zip folder
`ml-10M100K/`), and Amazon 2014 `reviews_<C>_5.json.gz` + `meta_<C>.json.gz` (meta as
Python literals, as the originals are) for Beauty and the eight general categories of the
paper's Table 4. Sized for the paper profile's protocol (5-core, a 10 % cold pool of at
least 30 items, 29 negatives), and shaped like the real files where the protocol reads
structure: a few ML-1M people are in ML-10M under other ids with the same (film, second)
ratings, Amazon reviewer ids are shared across categories, some general items carry
target titles.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from bench.profiles import AMAZON_GENERAL

T0 = 956_703_932  # ML-1M's first rating time


def _movies(n: int, offset: int = 0) -> list[tuple[int, str]]:
    words = ("Night", "River", "Stone", "Glass", "Paper", "Iron", "Storm", "Garden", "Winter",
             "Summer", "Shadow", "Light", "Heat", "Misérables")
    return [(m, f"{words[m % len(words)]} {words[(m // len(words)) % len(words)]} "
                f"{m + offset} ({1950 + m % 50})") for m in range(1, n + 1)]


def _ratings(rng: np.random.Generator, users: range, n_items: int, per_user: int,
             t0: int) -> list[tuple[int, int, int]]:
    out = []
    for u in users:
        start = t0 + 86_400 * int(rng.integers(0, 300))
        for j, m in enumerate(rng.choice(n_items, per_user, replace=False) + 1):
            out.append((u, int(m), start + 3 * j))
    return out


def _write_dat(folder: Path, ratings, movies, encoding: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text(
        "".join(f"{u}::{m}::{1 + (u + m) % 5}::{t}\n" for u, m, t in ratings))
    (folder / "movies.dat").write_bytes("".join(
        f"{m}::{title}::Drama\n" for m, title in movies).encode(encoding))


def write_movielens(root: Path, seed: int = 0, users: int = 60, items: int = 450,
                    shared: int = 4) -> dict[int, int]:
    """ML-1M and ML-10M; returns {ML-1M user: their ML-10M id} for the shared people."""
    rng = np.random.default_rng([seed, 1])
    movies = _movies(items)
    ml1 = _ratings(rng, range(1, users + 1), items, 60, T0)
    ml10 = _ratings(rng, range(1, users + 1), items, 40, T0 - 400 * 86_400)
    people = {}
    for k, u in enumerate(rng.choice(users, shared, replace=False) + 1):
        sid = users + 1 + k
        people[int(u)] = sid
        ml10 += [(sid, m, t) for uu, m, t in ml1 if uu == u][:15]
    (root / "ml-1m").mkdir(parents=True, exist_ok=True)
    _write_dat(root / "ml-1m", ml1, movies, "latin-1")
    (root / "ml-1m" / "users.dat").write_text(
        "".join(f"{u}::F::25::1::00000\n" for u in range(1, users + 1)))
    _write_dat(root / "ml-10m" / "ml-10M100K", ml10, movies, "utf-8")
    return people


def _gz(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def write_amazon(root: Path, category: str, seed: int, users: int, items: int,
                 per_user: int, reviewers: list[str], titles: dict[str, str]) -> None:
    """One Amazon 2014 category: 5-core reviews and Python-literal meta."""
    rng = np.random.default_rng([seed, sum(map(ord, category))])
    asins = [f"B{category[:3].upper()}{i:05d}" for i in range(items)]
    reviews = []
    for u in reviewers[:users]:
        start = 1_300_000_000 + 86_400 * int(rng.integers(0, 600))
        for j, a in enumerate(rng.choice(items, per_user, replace=False)):
            reviews.append(json.dumps({"reviewerID": u, "asin": asins[a],
                                       "unixReviewTime": start + 86_400 * j,
                                       "overall": 5.0, "reviewText": "fine"}))
    meta = [repr({"asin": a, "title": titles.get(a, f"{category} product {i}"),
                  "categories": [[category]]}) for i, a in enumerate(asins)]
    folder = root / f"amazon2014-{category}"
    _gz(folder / f"reviews_{category}_5.json.gz", reviews)
    _gz(folder / f"meta_{category}.json.gz", meta)


def write_paper_data(root: Path, seed: int = 0) -> Path:
    """Every raw file the paper profile reads for ml-1m and amazon2014-Beauty (their
    general corpora included), under `root` (use it as $MOLOREC_BENCH_DATA)."""
    root = Path(root)
    write_movielens(root, seed)
    reviewers = [f"A{n:013d}" for n in range(200)]
    write_amazon(root, "Beauty", seed, 60, 450, 60, reviewers[:60], {})
    for k, full in enumerate(AMAZON_GENERAL):
        cat = full.split("-", 1)[1]
        # 2 Beauty reviewers in each general category (removed by id); 18 others, some
        # of them in two categories
        who = reviewers[2 * k:2 * k + 2] + reviewers[60 + 12 * k:60 + 12 * k + 18]
        write_amazon(root, cat, seed, 20, 30, 10, who, {})
    return root
