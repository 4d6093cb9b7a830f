"""Loaders for the raw files the paper's datasets ship as (MovieLens .dat, Amazon 2014/2018).

Each returns `Interactions` with raw titles only for items that occur in the events (titles
are cleaned and de-duplicated later). Malformed input raises `ProtocolError` naming the file
and its 1-based line, so a corrupt download is found rather than silently shrunk.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from protocols.errors import ProtocolError
from protocols.interactions import Interactions

_DOWNLOAD_HINT = "fetch it with `python -m bench data download {name}` or place it there by hand"


# ---------------------------------------------------------------- helpers


def _find(root: Path, candidates: list[str], dataset: str) -> Path:
    """First existing candidate in root or one level below (zip archives add a folder)."""
    root = Path(root)
    dirs = [root]
    if root.is_dir():
        dirs += sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for d in dirs:
        for name in candidates:
            if (d / name).is_file():
                return d / name
    raise ProtocolError(
        f"missing file (looked for {' or '.join(candidates)} here and one folder below); "
        + _DOWNLOAD_HINT.format(name=dataset),
        root / candidates[0],
    )


def _decode(raw: bytes) -> str:
    """UTF-8 when valid (ML-10M), else latin-1 (ML-1M); latin-1 never fails."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _is_int(text: str) -> bool:
    return re.fullmatch(r"\s*[-+]?\d+\s*", text) is not None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- MovieLens .dat

_ML_FIELDS = ("user", "item", "rating", "timestamp")


def _ratings_fast(raw: bytes) -> pd.DataFrame:
    """Vectorized parse; any pandas complaint is re-diagnosed line by line by the caller."""
    frame = pd.read_csv(
        io.BytesIO(raw.replace(b"::", b"\t")), sep="\t", header=None, engine="c",
        quoting=csv.QUOTE_NONE, dtype={0: np.int64, 1: np.int64, 2: np.float64, 3: np.int64},
    )
    if frame.shape[1] != 4:
        raise ValueError(f"expected 4 fields, got {frame.shape[1]}")
    return frame


def _int_ids_as_str(values: np.ndarray) -> tuple[pd.Series, list[str]]:
    """Categorical of str ids and the distinct ids: each distinct id is converted once and
    from_columns factorizes categoricals on their codes (str() per row costs seconds at 10M)."""
    codes, uniques = pd.factorize(values)
    names = [str(v) for v in uniques]
    return pd.Series(pd.Categorical.from_codes(codes, categories=names)), names


def _ratings_locate_error(path: Path, raw: bytes) -> None:
    """Slow path, run only after the fast parse failed: raise at the first bad line."""
    for number, line in enumerate(_decode(raw).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("::")
        if len(fields) != 4:
            raise ProtocolError(
                f"expected 4 '::'-separated fields (UserID::MovieID::Rating::Timestamp), "
                f"got {len(fields)}: {line[:80]!r}", path, number)
        for name, value in zip(_ML_FIELDS, fields, strict=True):
            ok = _is_float(value) if name == "rating" else _is_int(value)
            if not ok:
                kind = "a number" if name == "rating" else "an integer"
                raise ProtocolError(f"{name} is not {kind}: {value[:40]!r}", path, number)


def _read_ratings(path: Path) -> pd.DataFrame:
    raw = path.read_bytes()
    try:
        return _ratings_fast(raw)
    except (ValueError, OverflowError, pd.errors.ParserError) as err:
        _ratings_locate_error(path, raw)
        raise ProtocolError(f"could not parse ratings: {err}", path) from err


def _read_movies(path: Path) -> tuple[dict[str, str], int]:
    """MovieID -> title, and the number of repeated identical lines; a repeated id with
    another title is an error naming both lines."""
    titles: dict[str, str] = {}
    first: dict[str, int] = {}
    repeated = 0
    for number, line in enumerate(_decode(path.read_bytes()).split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        head, sep, rest = line.partition("::")
        title, sep2, _genres = rest.rpartition("::")
        if not sep or not sep2:
            raise ProtocolError(
                f"expected 'MovieID::Title::Genres', got {line[:80]!r}", path, number)
        if not _is_int(head):
            raise ProtocolError(f"MovieID is not an integer: {head[:40]!r}", path, number)
        movie = head.strip()
        if movie in titles:
            if titles[movie] != title:
                raise ProtocolError(f"MovieID {movie} again, with another title (first at line "
                                    f"{first[movie]}); ids must be unique", path, number)
            repeated += 1
            continue
        titles[movie], first[movie] = title, number
    return titles, repeated


def load_movielens_dat(root: Path, name: str) -> Interactions:
    """MovieLens-1M / -10M: `ratings.dat` + `movies.dat` under root (or root/<zip folder>)."""
    ratings_path = _find(root, ["ratings.dat"], name)
    movies_path = _find(ratings_path.parent, ["movies.dat"], name)
    frame = _read_ratings(ratings_path)
    users, _ = _int_ids_as_str(frame[0].to_numpy())
    items, distinct_items = _int_ids_as_str(frame[1].to_numpy())
    timestamps = frame[3].to_numpy(dtype=np.float64)
    del frame
    all_titles, repeated = _read_movies(movies_path)
    titles = {i: all_titles[i] for i in distinct_items if i in all_titles}
    inter = Interactions.from_columns(name, users, items, timestamps, titles)
    if repeated:
        inter.stats["repeated_item_rows"] = repeated
    return inter


# ---------------------------------------------------------------- Amazon


def _gz_lines(path: Path, stats: Counter) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of a gzip (or plain) UTF-8 file; corrupt archives are
    reported with the last line read. A line that is not valid UTF-8 is decoded with
    replacement characters and counted in stats["lines_not_utf8"] (the manifest shows it)."""
    opener = gzip.open if path.suffix == ".gz" else open
    number = 0
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    line = raw.decode("utf-8", errors="replace")
                    stats["lines_not_utf8"] += 1
                if line.strip():
                    yield number, line
    except (OSError, EOFError, zlib.error) as err:
        raise ProtocolError(f"corrupt or truncated file after line {number}: {err}",
                            path, number + 1) from err


def _read_reviews(path: Path, stats: Counter) -> tuple[list[str], list[str], np.ndarray]:
    users: list[str] = []
    items: list[str] = []
    times: list[int] = []
    for number, line in _gz_lines(path, stats):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ProtocolError(f"not a JSON object: {err.msg}", path, number) from err
        if not isinstance(rec, dict):
            raise ProtocolError("not a JSON object", path, number)
        missing = [k for k in ("reviewerID", "asin", "unixReviewTime") if k not in rec]
        if missing:
            raise ProtocolError(f"review lacks {', '.join(missing)}", path, number)
        stamp = rec["unixReviewTime"]
        if isinstance(stamp, bool) or not (
                isinstance(stamp, int) or (isinstance(stamp, str) and _is_int(stamp))):
            raise ProtocolError(f"unixReviewTime is not an integer: {stamp!r}", path, number)
        users.append(str(rec["reviewerID"]))
        items.append(str(rec["asin"]))
        times.append(int(stamp))
    if not users:
        raise ProtocolError("no reviews in file", path)
    return users, items, np.asarray(times, dtype=np.float64)


_ASIN_RE = re.compile(r"""["']asin["']\s*:\s*["']([^"']*)["']""")


def _parse_meta_line(line: str, python_literal: bool) -> Any:
    if python_literal:
        try:  # the 2014 metadata is Python repr, not JSON: never eval it
            return ast.literal_eval(line)
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            pass  # some mirrors re-encode it as JSON
    return json.loads(line)


def _read_meta(path: Path, wanted: set[str], python_literal: bool, stats: Counter
               ) -> dict[str, str]:
    """Raw titles of the wanted asins; other lines are skipped before the costly parse.
    Amazon's metadata repeats some records: the last one wins (as it always has here), and
    the repeats are counted in stats["repeated_meta_records"]."""
    titles: dict[str, str] = {}
    seen: set[str] = set()
    for number, line in _gz_lines(path, stats):
        found = _ASIN_RE.search(line)
        if found is not None and found.group(1) not in wanted:
            continue
        try:
            rec = _parse_meta_line(line, python_literal)
        except (json.JSONDecodeError, SyntaxError, ValueError, RecursionError) as err:
            kind = "Python-literal dict" if python_literal else "JSON object"
            raise ProtocolError(f"not a {kind}: {err}", path, number) from err
        if not isinstance(rec, dict) or "asin" not in rec:
            raise ProtocolError("metadata record without 'asin'", path, number)
        asin = str(rec["asin"])
        if asin in wanted:
            stats["repeated_meta_records"] += asin in seen
            seen.add(asin)
        title = rec.get("title")
        if asin in wanted and isinstance(title, str) and title.strip():
            titles[asin] = title
    return titles


def _load_amazon(name: str, reviews_path: Path, meta_path: Path,
                 python_literal: bool) -> Interactions:
    stats: Counter = Counter()
    users, items, times = _read_reviews(reviews_path, stats)
    titles = _read_meta(meta_path, set(items), python_literal, stats)
    inter = Interactions.from_columns(name, users, items, times, titles)
    inter.stats.update({k: v for k, v in stats.items() if v})
    return inter


def load_amazon2014(root: Path, category: str) -> Interactions:
    """Amazon 2014 5-core: `reviews_<Category>_5.json.gz` (JSON lines) and
    `meta_<Category>.json.gz` (Python-literal dict lines, parsed with ast.literal_eval)."""
    name = f"amazon2014-{category}"
    reviews = _find(root, [f"reviews_{category}_5.json.gz", f"reviews_{category}_5.json"], name)
    meta = _find(root, [f"meta_{category}.json.gz", f"meta_{category}.json"], name)
    return _load_amazon(name, reviews, meta, python_literal=True)


def load_amazon2018(root: Path, category: str) -> Interactions:
    """Amazon 2018 5-core: `<Category>_5.json.gz` and `meta_<Category>.json.gz`, both JSON
    lines."""
    name = f"amazon2018-{category}"
    reviews = _find(root, [f"{category}_5.json.gz", f"{category}_5.json"], name)
    meta = _find(root, [f"meta_{category}.json.gz", f"meta_{category}.json"], name)
    return _load_amazon(name, reviews, meta, python_literal=False)
