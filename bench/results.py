"""Per-cell results as stored on disk, their verification, and the recomputation of
metrics from scores.

A cell is one (table, dataset, setting, system, seed). Its directory holds:
  scores.jsonl   {"user", "candidates": [30 ids], "scores": [30 floats] or null}
                 (file order; null: the system abstained, a miss); on a full-ranking
                 protocol {"user", "positive_score": float or null, "at_or_above":
                 [[item, score], ...]}: every candidate scored at or above the positive,
                 best first (what its rank depends on; bench.cells.full_rank_rows)
  metrics.jsonl  {"user", "positive", "NDCG@1": v, "NDCG@3": v, ...}   per user
  cell.json      what was run: names, profile, config and its hash, candidates_sha256,
                 and the sha256 of scores.jsonl and metrics.jsonl

A cell is never trusted as found: `load_cell` checks the recorded hashes, recomputes every
metric from scores.jsonl and the protocol's test_candidates.jsonl, and requires the stored
metrics to agree. Tables are made from the recomputed values.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from bench.api import GROUPS
from protocols import metrics as M
from protocols.digest import file_sha256
from protocols.errors import HarnessError
from protocols.files import POOL_FILE
from protocols.options import DEFAULT_NEGATIVES

METRICS = ("NDCG@1", "NDCG@3", "HR@1", "HR@3", "MRR")
CELL_FORMAT = "molorec-bench-cell/1"
HASHED = {"scores.jsonl": "scores_sha256", "metrics.jsonl": "metrics_sha256"}
TOLERANCE = 1e-9  # stored vs recomputed metric (both come from the same float64 code)


class DamagedCell(HarnessError, ValueError):
    """A cell whose files are missing, edited or inconsistent; never used for a table."""

    def __init__(self, cell_dir: Path, reason: str):
        self.path = str(cell_dir)
        self.reason = reason
        super().__init__(f"damaged cell {cell_dir}: {reason}")


@dataclass
class CellResult:
    """One finished cell: per-user metric values aligned by user id."""

    table: str
    dataset: str
    setting: str
    system: str
    group: str
    seed: int
    candidates_sha256: str
    users: list[str]
    values: dict[str, np.ndarray]  # metric name -> per-user values, aligned with users
    meta: dict[str, Any] = field(default_factory=dict)
    n_candidates: int | None = None  # per test user (None: not known, or full ranking)
    negatives: int | str = DEFAULT_NEGATIVES  # the protocol's (protocols.options; "all")

    def mean(self, metric: str) -> float:
        return float(np.mean(self.values[metric]))


def metric_rows(users, positives, candidates, scores: np.ndarray) -> tuple[list[dict], dict]:
    """Per-user metric rows plus per-metric arrays, from scores in candidate-file order."""
    pos = np.array([c.index(p) for c, p in zip(candidates, positives, strict=True)])
    values = {m: M.compute(m, scores, pos) for m in METRICS}
    return rows_of(users, positives, values), values


def rows_of(users, positives, values: dict[str, np.ndarray]) -> list[dict]:
    """metrics.jsonl rows from per-metric arrays."""
    return [
        {"user": u, "positive": p, **{m: float(values[m][n]) for m in METRICS}}
        for n, (u, p) in enumerate(zip(users, positives, strict=True))
    ]


def full_metric_values(above: np.ndarray, tied: np.ndarray, n: np.ndarray
                       ) -> dict[str, np.ndarray]:
    """Every metric from each positive's rank bounds (full ranking: per-user counts)."""
    return {m: M.from_ranks(m, above, tied, n) for m in METRICS}


def jsonl_text(rows) -> str:
    """Serialize rows as JSON lines (the caller writes the text atomically)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


# ---------------------------------------------------------------- the protocol side


@dataclass(frozen=True)
class TestCandidates:
    """A protocol's test users, positives and candidates, read from a verified file."""

    candidates_sha256: str
    users: tuple[str, ...]
    positives: tuple[str, ...]
    candidates: tuple[tuple[str, ...], ...]  # full ranking: empty (pool and exclude say)
    negatives: int | str = DEFAULT_NEGATIVES
    pool: tuple[str, ...] | None = None  # full ranking: the test pool, in request order
    exclude: tuple[frozenset[str], ...] | None = None  # full ranking: not candidates

    @property
    def full_ranking(self) -> bool:
        return self.pool is not None


def _manifest(proto_dir: Path) -> dict | None:
    try:
        m = json.loads((proto_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


@lru_cache(maxsize=16)
def _test_candidates(path: str, _stamp: tuple[int, ...]) -> TestCandidates | str:
    """Parsed test candidates, or why they cannot be used (cached per file version)."""
    proto_dir = Path(path)
    m = _manifest(proto_dir)
    if m is None or "candidates_sha256" not in m:
        return f"{proto_dir / 'manifest.json'} is missing or not a protocol manifest"
    f = proto_dir / "test_candidates.jsonl"
    if file_sha256(f) != m.get("files", {}).get("test_candidates.jsonl"):
        return f"{f} does not match the sha256 in its manifest.json"
    negatives = (m.get("options") or {}).get("negatives", DEFAULT_NEGATIVES)
    pool = None
    if POOL_FILE in m.get("files", {}):
        pf = proto_dir / POOL_FILE
        if file_sha256(pf) != m["files"][POOL_FILE]:
            return f"{pf} does not match the sha256 in its manifest.json"
        try:
            pool = tuple(json.loads(line)["item"] for line in
                         pf.read_text(encoding="utf-8").splitlines())
        except (ValueError, KeyError, TypeError) as e:
            return f"{pf} cannot be parsed ({e!r})"
    users, positives, cands, excl = [], [], [], []
    try:
        for line in f.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            users.append(r["user"])
            positives.append(r["positive"])
            if pool is None:
                cands.append(tuple(r["candidates"]))
            else:
                excl.append(frozenset(r["exclude"]))
    except (ValueError, KeyError, TypeError) as e:
        return f"{f} cannot be parsed ({e!r})"
    return TestCandidates(m["candidates_sha256"], tuple(users), tuple(positives), tuple(cands),
                          negatives, pool, tuple(excl) if pool is not None else None)


def read_test_candidates(proto_dir: Path) -> TestCandidates | str:
    """The protocol's test candidates after checking the file against its manifest, or
    why they cannot be used. Cached while neither file changes."""
    stamp = []
    for name in ("test_candidates.jsonl", "manifest.json", POOL_FILE):
        try:
            st = (Path(proto_dir) / name).stat()
        except OSError:
            if name == POOL_FILE:  # sampled protocols have none
                continue
            return f"{Path(proto_dir) / name} not found"
        stamp += [st.st_mtime_ns, st.st_size]
    return _test_candidates(str(Path(proto_dir).resolve()), tuple(stamp))


def find_protocol(cell_dir: Path, meta: dict) -> Path | None:
    """The protocol a cell was scored on: OUT/protocols/<dataset>/<setting>/seed-*/ (the
    layout of OUT/cells/<dataset>/<setting>/<system>/seed-<n>/) or the recorded path,
    whichever has the cell's candidates_sha256."""
    cell_dir = Path(cell_dir).resolve()
    places: list[Path] = []
    if len(cell_dir.parents) > 4:
        out, dataset, setting = cell_dir.parents[4], cell_dir.parents[2], cell_dir.parents[1]
        places += sorted((out / "protocols" / dataset.name / setting.name).glob("seed-*"))
    if isinstance(meta.get("protocol"), str):
        places.append(Path(meta["protocol"]))
    for p in places:
        m = _manifest(p)
        if m is not None and m.get("candidates_sha256") == meta.get("candidates_sha256"):
            return p
    return None


# ---------------------------------------------------------------- reading a cell


def _read_meta(cell_dir: Path) -> dict[str, Any]:
    path = cell_dir / "cell.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if not cell_dir.is_dir():
            raise DamagedCell(cell_dir, "not a directory") from None
        held = sorted(p.name for p in cell_dir.iterdir())
        raise DamagedCell(cell_dir, "cell.json is missing (the directory holds "
                          f"{', '.join(held) if held else 'nothing'}: copied in part?)") from None
    except NotADirectoryError:
        raise DamagedCell(cell_dir, "not a directory") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise DamagedCell(cell_dir, f"cell.json is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != CELL_FORMAT:
        raise DamagedCell(cell_dir, f"cell.json is not a {CELL_FORMAT} record")
    missing = [k for k in ("table", "dataset", "setting", "system", "group", "seed",
                           "candidates_sha256") if k not in meta]
    if missing:
        raise DamagedCell(cell_dir, f"cell.json lacks {', '.join(missing)}")
    if meta["group"] not in GROUPS:
        raise DamagedCell(cell_dir, f"unknown group {meta['group']!r} in cell.json "
                                    f"(one of {', '.join(GROUPS)})")
    if isinstance(meta["seed"], bool) or not isinstance(meta["seed"], int):
        raise DamagedCell(cell_dir, f"seed {meta['seed']!r} in cell.json is not an integer")
    return meta


def _jsonl(cell_dir: Path, name: str) -> list[dict]:
    path = cell_dir / name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DamagedCell(cell_dir, f"{name} is missing") from None
    except UnicodeDecodeError as e:
        raise DamagedCell(cell_dir, f"{name} is not UTF-8 ({e})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            row = json.loads(line)
        except ValueError as e:
            raise DamagedCell(cell_dir, f"{name}:{n}: not valid JSON ({e})") from None
        if not isinstance(row, dict):
            raise DamagedCell(cell_dir, f"{name}:{n}: not a JSON object")
        rows.append(row)
    return rows


def _score_row(cell_dir: Path, n: int, row: dict, user: str, cands: tuple[str, ...]
               ) -> list[float]:
    where = f"scores.jsonl:{n}"
    if row.get("user") != user:
        raise DamagedCell(cell_dir, f"{where}: user {row.get('user')!r}, the protocol's test "
                                    f"user {n} is {user!r}")
    if row.get("candidates") != list(cands):
        raise DamagedCell(cell_dir, f"{where}: candidates differ from the protocol's")
    s = row.get("scores")
    if s is None:
        return [math.nan] * len(cands)  # an abstention
    if (not isinstance(s, list) or len(s) != len(cands)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       and math.isfinite(v) for v in s)):
        raise DamagedCell(cell_dir, f"{where}: scores must be {len(cands)} finite numbers "
                                    "or null")
    return [float(v) for v in s]


def _check_metrics(cell_dir: Path, rows: list[dict], test: TestCandidates,
                   values: dict[str, np.ndarray]) -> None:
    if len(rows) != len(test.users):
        raise DamagedCell(cell_dir, f"metrics.jsonl has {len(rows)} rows, the protocol has "
                                    f"{len(test.users)} test users")
    for n, (r, u, p) in enumerate(zip(rows, test.users, test.positives, strict=True)):
        if r.get("user") != u or r.get("positive") != p:
            raise DamagedCell(cell_dir, f"metrics.jsonl:{n + 1}: user or positive differs "
                                        "from the protocol's")
        for m in METRICS:
            v = r.get(m)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            if not ok or not abs(float(v) - values[m][n]) <= TOLERANCE:
                raise DamagedCell(cell_dir, f"metrics.jsonl:{n + 1}: {m} is {v!r}, "
                                            f"recomputed from scores.jsonl: {values[m][n]!r}")


def load_cell(cell_dir: Path, protocol: Path | None = None) -> CellResult:
    """Read a finished cell back, verified: recorded hashes, then every metric recomputed
    from the scores and `protocol`'s test candidates (found from the layout when None).
    Raises DamagedCell, naming the directory, when anything does not agree."""
    cell_dir = Path(cell_dir)
    meta = _read_meta(cell_dir)
    for name, key in HASHED.items():
        if not (cell_dir / name).is_file():
            raise DamagedCell(cell_dir, f"{name} is missing")
        if key in meta and file_sha256(cell_dir / name) != meta[key]:
            raise DamagedCell(cell_dir, f"{name} does not match the sha256 in cell.json "
                                        "(edited or truncated)")
    proto = protocol if protocol is not None else find_protocol(cell_dir, meta)
    if proto is None:
        raise DamagedCell(cell_dir, f"no protocol with its candidates_sha256 "
                                    f"{str(meta['candidates_sha256'])[:12]} was found (rebuilt "
                                    "from other data?), so its scores cannot be verified")
    test = read_test_candidates(proto)
    if isinstance(test, str):
        raise DamagedCell(cell_dir, f"cannot verify against its protocol: {test}")
    if test.candidates_sha256 != meta["candidates_sha256"]:
        raise DamagedCell(cell_dir, f"scored on candidates {meta['candidates_sha256'][:12]}, "
                                    f"the protocol {proto} has {test.candidates_sha256[:12]}")
    rows = _jsonl(cell_dir, "scores.jsonl")
    if len(rows) != len(test.users):
        raise DamagedCell(cell_dir, f"scores.jsonl has {len(rows)} rows, the protocol has "
                                    f"{len(test.users)} test users (truncated?)")
    if test.full_ranking:
        values, width = _full_values(cell_dir, rows, test), None
    else:
        width = len(test.candidates[0]) if test.candidates else 0
        scores = np.array([_score_row(cell_dir, n, r, u, c) for n, (r, u, c) in
                           enumerate(zip(rows, test.users, test.candidates, strict=True), 1)],
                          dtype=np.float64).reshape(len(rows), width)
        _, values = metric_rows(test.users, test.positives, test.candidates, scores)
    _check_metrics(cell_dir, _jsonl(cell_dir, "metrics.jsonl"), test, values)
    return CellResult(meta["table"], meta["dataset"], meta["setting"], meta["system"],
                      meta["group"], int(meta["seed"]), meta["candidates_sha256"],
                      list(test.users), values, meta, width, test.negatives)


def _full_values(cell_dir: Path, rows: list[dict], test: TestCandidates
                 ) -> dict[str, np.ndarray]:
    """Every metric recomputed from full-ranking score rows: each listed item must be a
    candidate (in the pool, not excluded, not the positive), listed once, scored at or
    above the positive; the positive's rank bounds come from those scores and its
    candidate count from the protocol."""
    pool = set(test.pool or ())
    n_all = len(test.pool or ())
    above, tied, n_c = (np.zeros(len(rows), dtype=np.int64) for _ in range(3))
    for n, (row, user, positive, excl) in enumerate(
            zip(rows, test.users, test.positives, test.exclude or (), strict=True)):
        where = f"scores.jsonl:{n + 1}"
        if row.get("user") != user:
            raise DamagedCell(cell_dir, f"{where}: user {row.get('user')!r}, the protocol's "
                                        f"test user {n + 1} is {user!r}")
        n_c[n] = n_all - len(excl)
        ps, listed = row.get("positive_score"), row.get("at_or_above")
        if not isinstance(listed, list):
            raise DamagedCell(cell_dir, f"{where}: at_or_above must be a list")
        if ps is None:  # an abstention: a miss
            if listed:
                raise DamagedCell(cell_dir, f"{where}: an abstention lists no items")
            above[n] = n_c[n] - 1
            continue
        if not _finite(ps):
            raise DamagedCell(cell_dir, f"{where}: positive_score must be a finite number")
        seen: set[str] = set()
        for pair in listed:
            ok = (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
                  and _finite(pair[1]))
            if not ok or pair[0] not in pool or pair[0] in excl or pair[0] == positive \
                    or pair[0] in seen or pair[1] < ps:
                raise DamagedCell(cell_dir, f"{where}: {pair!r} is not a candidate scored at "
                                            "or above the positive (listed once)")
            seen.add(pair[0])
            above[n] += pair[1] > ps
            tied[n] += pair[1] == ps
    return full_metric_values(above, tied, n_c)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def recompute_from_scores(scores_path: Path, candidates_path: Path, metric: str) -> float:
    """Mean of `metric` recomputed from scores.jsonl and the protocol's candidate file,
    independent of the stored metrics: the check that every number is reproducible."""
    positives = {}
    for line in Path(candidates_path).read_text().splitlines():
        r = json.loads(line)
        positives[r["user"]] = r["positive"]
    rows = [json.loads(line) for line in Path(scores_path).read_text().splitlines()]
    scores = np.array([[np.nan] * len(r["candidates"]) if r["scores"] is None else r["scores"]
                       for r in rows], dtype=np.float64)
    pos = np.array([r["candidates"].index(positives[r["user"]]) for r in rows])
    return float(M.compute(metric, scores, pos).mean())
