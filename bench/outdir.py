"""Who owns a results directory (`--out`), and one run at a time in it.

The harness writes into `--out` only if it is absent, empty, or written by the harness
before: it carries the marker file MARKER. A directory from a version without the marker
is recognised by its harness files (a cell.json or a protocol manifest.json) and adopted.
Anything else is refused, so a run never overwrites or deletes files it did not write.
A run holds an exclusive lock (LOCK) on its directory; a second run is refused.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.results import CELL_FORMAT
from protocols.errors import BusyError, OutputError
from protocols.files import PROTOCOL_FORMAT
from protocols.store import atomic_write_text

MARKER = ".molorec-bench"
LOCK = ".molorec-bench.lock"
OUT_FORMAT = "molorec-bench-out/1"


def _format_of(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("format") if isinstance(data, dict) else None


def _has_harness_files(out: Path) -> bool:
    """A directory written before the marker existed: it holds a cell or a protocol."""
    cells = (out / "cells").glob("*/*/*/seed-*/cell.json")
    if any(_format_of(p) == CELL_FORMAT for p in cells):
        return True
    manifests = (out / "protocols").glob("*/*/seed-*/manifest.json")
    return any(_format_of(p) == PROTOCOL_FORMAT for p in manifests)


def is_harness_dir(out: Path) -> bool:
    out = Path(out)
    return _format_of(out / MARKER) == OUT_FORMAT or (out.is_dir() and _has_harness_files(out))


def claim(out: Path) -> bool:
    """Make `out` a results directory of this harness, or refuse: absent and empty
    directories get the marker, as do harness directories that predate it. True if `out`
    was created (or was empty) here."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a directory; choose another path")
    if out.is_dir() and _format_of(out / MARKER) == OUT_FORMAT:
        return False
    if out.is_dir() and any(out.iterdir()) and not _has_harness_files(out):
        shown = ", ".join(sorted(p.name for p in out.iterdir())[:5])
        raise OutputError(
            f"--out {out} is not empty and was not written by molorec-bench (no {MARKER} "
            f"marker, no cells or protocols; it holds {shown}); choose an empty or new "
            "directory")
    fresh = not out.is_dir() or not any(out.iterdir())
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MARKER, json.dumps({"format": OUT_FORMAT}) + "\n")
    return fresh


@contextmanager
def locked(out: Path) -> Iterator[Path]:
    """Claim `out` and hold its lock for the block; another holder makes this refuse.
    If the block fails before writing anything into a directory claimed fresh here, the
    marker and lock are removed again (nothing is left behind)."""
    out = Path(out)
    created = not out.exists()
    fresh = claim(out)
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise BusyError(f"--out {out} is in use by another run (pid {holder}); wait for "
                            "it to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield out
        except BaseException:
            if fresh and {p.name for p in out.iterdir()} <= {MARKER, LOCK}:
                for name in (MARKER, LOCK):
                    (out / name).unlink(missing_ok=True)
                if created:
                    out.rmdir()
            raise
    finally:
        os.close(fd)
