"""Reading and writing a protocol directory (the file contract other tools rely on).

Files: items.jsonl, train.jsonl, general.jsonl, valid_candidates.jsonl,
test_candidates.jsonl, manifest.json. Writes go to a sibling temporary directory that
is renamed into place (protocols.store.atomic_dir), so a crash never leaves a
half-written protocol.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocols.data import ScoreRequest, TrainData, UserSequence, Validation
from protocols.digest import file_sha256, text_sha256
from protocols.errors import OutputError, ProtocolError

FILES = ("items.jsonl", "train.jsonl", "general.jsonl", "valid_candidates.jsonl",
         "test_candidates.jsonl")
CANDIDATE_FILES = ("valid_candidates.jsonl", "test_candidates.jsonl")
# full ranking (`--negatives all`) only: the test pool, one {"item"} per line, in the order
# every test request lists its candidates; a test row then names the pool items the user
# interacted with ("exclude") instead of listing its candidates
POOL_FILE = "test_pool.jsonl"
PROTOCOL_FORMAT = "molorec-bench-protocol/1"


def protocol_files(manifest: dict[str, Any]) -> tuple[str, ...]:
    """The data files of a protocol directory: FILES, plus the test pool when its manifest
    records one (a full-ranking protocol)."""
    files = manifest.get("files") if isinstance(manifest, dict) else None
    return (*FILES, POOL_FILE) if isinstance(files, dict) and POOL_FILE in files else FILES


def candidates_sha256(file_hashes: dict[str, str]) -> str:
    """One hash for the candidate files: sha256 of 'name sha\\n' lines, valid then test
    (then the test pool, where there is one: sampled protocols keep their hash)."""
    names = (*CANDIDATE_FILES, *((POOL_FILE,) if POOL_FILE in file_hashes else ()))
    text = "".join(f"{name} {file_hashes[name]}\n" for name in names)
    return text_sha256(text)


def overlapping(a: Path, b: Path) -> bool:
    """True if a and b are the same directory or one contains the other."""
    a, b = Path(a).resolve(), Path(b).resolve()
    return a == b or a in b.parents or b in a.parents


def check_protocol_out(out: Path) -> None:
    """Refuse to replace `out` unless it is absent, an empty directory, or a protocol
    directory this harness wrote (its manifest.json names the protocol format and it holds
    nothing else): replacing deletes what is there."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise OutputError(f"--out {out} exists and is not a directory; choose a new path "
                          "(a protocol build replaces its output directory)")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    try:
        fmt = json.loads((out / "manifest.json").read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        fmt = None
    foreign = [e for e in entries if e not in (*FILES, POOL_FILE, "manifest.json")]
    if fmt != PROTOCOL_FORMAT or foreign:
        shown = ", ".join((foreign or entries)[:5])
        raise OutputError(f"--out {out} is not empty and is not a protocol directory this "
                          f"harness wrote (it holds {shown}); a build replaces the whole "
                          "directory, so choose an empty or new path")


def read_jsonl(path: Path, check: Callable[[dict[str, Any]], None] | None = None
               ) -> list[dict[str, Any]]:
    """Parse a JSON-lines file; errors name the file and line."""
    rows = []
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise ProtocolError("file not found", path) from None
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("expected a JSON object")
                if check:
                    check(row)
            except (ValueError, KeyError, TypeError) as e:
                raise ProtocolError(f"malformed line: {e}", path, n) from None
            rows.append(row)
    return rows


def _check_sequence(row: dict) -> None:
    if not isinstance(row["user"], str) or not isinstance(row["items"], list):
        raise ValueError("need 'user' (string) and 'items' (list)")


def _check_candidates(row: dict) -> None:
    if row["positive"] not in row["candidates"]:
        raise ValueError("the positive is not among the candidates")


def _check_item(row: dict) -> None:
    if not isinstance(row["item"], str):
        raise ValueError("need 'item' (a string)")


def read_pool(path: Path) -> tuple[str, ...]:
    """A full-ranking protocol's test pool, checked for repeats."""
    pool = tuple(r["item"] for r in read_jsonl(path, _check_item))
    if len(set(pool)) != len(pool):
        raise ProtocolError("an item is listed twice in the test pool", path)
    return pool


def check_full_row(pool: frozenset[str]) -> Callable[[dict[str, Any]], None]:
    """The check of a full-ranking test row: its positive is in the pool and not excluded,
    its exclusions are pool items."""
    def check(row: dict) -> None:
        excl = row["exclude"]
        if not isinstance(excl, list) or not all(isinstance(i, str) for i in excl):
            raise ValueError("need 'exclude' (a list of item ids)")
        if row["positive"] not in pool or row["positive"] in excl:
            raise ValueError("the positive is not a candidate (outside the test pool, or "
                             "excluded)")
        if not pool.issuperset(excl):
            raise ValueError("an excluded item is not in the test pool")
    return check


@dataclass(frozen=True)
class ProtocolFiles:
    """A loaded protocol directory."""

    root: Path
    manifest: dict[str, Any]
    data: TrainData
    valid: Validation
    test_requests: tuple[ScoreRequest, ...]
    _test_positives: tuple[str, ...]
    # full ranking: per test request, the pool items it ignores (the user's own), which
    # the harness drops from the request's candidates (the whole pool) after scoring
    test_exclude: tuple[frozenset[str], ...] | None = None

    @property
    def candidates_sha256(self) -> str:
        return self.manifest["candidates_sha256"]

    @property
    def full_ranking(self) -> bool:
        return self.test_exclude is not None

    def test_positives(self) -> tuple[str, ...]:
        """Labels for the harness's metric step, read only after a system has scored."""
        return self._test_positives


def _sequences(rows: list[dict]) -> tuple[UserSequence, ...]:
    return tuple(
        UserSequence(r["user"], tuple(r["items"]),
                     tuple(r["targets"]) if r.get("targets") is not None else None)
        for r in rows
    )


def load_protocol(root: Path) -> ProtocolFiles:
    """Read a directory written by `bench protocol build`, checking the file hashes."""
    root = Path(root)
    mpath = root / "manifest.json"
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise ProtocolError("no manifest.json: not a protocol directory", mpath) from None
    except ValueError as e:
        raise ProtocolError(f"malformed JSON: {e}", mpath) from None
    for name in protocol_files(manifest):
        want = manifest.get("files", {}).get(name)
        if want is None or file_sha256(root / name) != want:
            raise ProtocolError("file does not match the sha256 in manifest.json", root / name)
    titles = {r["item"]: r["title"] for r in read_jsonl(root / "items.jsonl")}
    train = _sequences(read_jsonl(root / "train.jsonl", _check_sequence))
    general = _sequences(read_jsonl(root / "general.jsonl", _check_sequence))
    history = {s.user: s.items for s in train}
    valid_rows = read_jsonl(root / "valid_candidates.jsonl", _check_candidates)
    full = POOL_FILE in protocol_files(manifest)
    pool = read_pool(root / POOL_FILE) if full else ()
    test_rows = read_jsonl(root / "test_candidates.jsonl",
                           check_full_row(frozenset(pool)) if full else _check_candidates)
    valid_pos = {r["user"]: r["positive"] for r in valid_rows}
    valid = Validation(
        tuple(ScoreRequest(r["user"], history[r["user"]], tuple(r["candidates"]))
              for r in valid_rows),
        tuple(r["positive"] for r in valid_rows),
    )
    # test-time history: the training sequence plus the validation positive
    # full ranking: every request shares the one pool tuple (memory: users + pool)
    test = tuple(
        ScoreRequest(r["user"], history[r["user"]] + (valid_pos[r["user"]],),
                     pool if full else tuple(r["candidates"]))
        for r in test_rows
    )
    data = TrainData(titles, train, general, manifest["setting"], manifest["dataset"])
    exclude = tuple(frozenset(r["exclude"]) for r in test_rows) if full else None
    return ProtocolFiles(root, manifest, data, valid, test,
                         tuple(r["positive"] for r in test_rows), exclude)
