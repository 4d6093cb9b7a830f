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
PROTOCOL_FORMAT = "molorec-bench-protocol/1"


def candidates_sha256(file_hashes: dict[str, str]) -> str:
    """One hash for the candidate files: sha256 of 'name sha\\n' lines, valid then test."""
    text = "".join(f"{name} {file_hashes[name]}\n" for name in CANDIDATE_FILES)
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
    foreign = [e for e in entries if e not in (*FILES, "manifest.json")]
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


@dataclass(frozen=True)
class ProtocolFiles:
    """A loaded protocol directory."""

    root: Path
    manifest: dict[str, Any]
    data: TrainData
    valid: Validation
    test_requests: tuple[ScoreRequest, ...]
    _test_positives: tuple[str, ...]

    @property
    def candidates_sha256(self) -> str:
        return self.manifest["candidates_sha256"]

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
    for name in FILES:
        want = manifest.get("files", {}).get(name)
        if want is None or file_sha256(root / name) != want:
            raise ProtocolError("file does not match the sha256 in manifest.json", root / name)
    titles = {r["item"]: r["title"] for r in read_jsonl(root / "items.jsonl")}
    train = _sequences(read_jsonl(root / "train.jsonl", _check_sequence))
    general = _sequences(read_jsonl(root / "general.jsonl", _check_sequence))
    history = {s.user: s.items for s in train}
    valid_rows = read_jsonl(root / "valid_candidates.jsonl", _check_candidates)
    test_rows = read_jsonl(root / "test_candidates.jsonl", _check_candidates)
    valid_pos = {r["user"]: r["positive"] for r in valid_rows}
    valid = Validation(
        tuple(ScoreRequest(r["user"], history[r["user"]], tuple(r["candidates"]))
              for r in valid_rows),
        tuple(r["positive"] for r in valid_rows),
    )
    # test-time history: the training sequence plus the validation positive
    test = tuple(
        ScoreRequest(r["user"], history[r["user"]] + (valid_pos[r["user"]],),
                     tuple(r["candidates"]))
        for r in test_rows
    )
    data = TrainData(titles, train, general, manifest["setting"], manifest["dataset"])
    return ProtocolFiles(root, manifest, data, valid, test,
                         tuple(r["positive"] for r in test_rows))
