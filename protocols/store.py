"""One artifact store, and the atomic writes every writer of the harness uses.

`Store(root).ensure(kind, key, build)` returns the directory `root/<kind>/<digest(key)>/`,
building it once: `build(tmp)` fills a temporary sibling, `key.json` (the key, written
last) marks it finished, and a rename puts it in place, so a reader never sees half an
artifact. Building holds an exclusive per-key lock (`root/.locks/<kind>/<digest>.lock`,
an flock: across processes, and across machines on a shared filesystem whose flock is
honoured, e.g. NFSv4), so parallel workers never build the same artifact twice: the
second waits, then finds it finished. A builder that dies releases the lock with its
process; the next one removes the dead one's partial directory and builds. Protocol
directories and cells are not content-addressed (their paths are names), but they are
written with the same `atomic_dir`.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from protocols.digest import digest

DONE = "key.json"  # written last: its presence marks a finished artifact
LOCKS = ".locks"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (a file or a directory) for the block."""
    path = Path(path)
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY if path.is_dir() else os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class Store:
    """Content-addressed artifact directories under `root` (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, kind: str, key: Any) -> Path:
        return self.root / kind / digest(key)

    @staticmethod
    def is_built(path: Path) -> bool:
        return (Path(path) / DONE).exists()

    @contextmanager
    def lock(self, kind: str, key: Any) -> Iterator[None]:
        """The per-key lock `ensure` builds under."""
        with file_lock(self.root / LOCKS / kind / f"{digest(key)}.lock"):
            yield

    def ensure(self, kind: str, key: Any, build: Callable[[Path], None]) -> Path:
        """The artifact for `key`, built by `build(tmp_dir)` unless already present."""
        out = self.path(kind, key)
        if self.is_built(out):
            return out
        with self.lock(kind, key):
            if self.is_built(out):  # another worker built it while this one waited
                return out
            out.parent.mkdir(parents=True, exist_ok=True)
            # a builder killed mid-build released the lock (the kernel drops a dead
            # process's flock) and left its partial directory: nobody else can be writing it
            for leftover in out.parent.glob(f".{out.name}.partial-*"):
                shutil.rmtree(leftover, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
            try:
                build(tmp)
                (tmp / DONE).write_text(json.dumps(key, sort_keys=True, indent=1, default=str))
                if out.exists():  # an unfinished leftover of a killed build
                    shutil.rmtree(out, ignore_errors=True)
                os.replace(tmp, out)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        return out


@contextmanager
def atomic_dir(out: Path, check: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary directory that replaces `out` only if the block succeeds.

    `check(out)` runs just before the swap, under a lock on the parent directory, and
    raises if `out` may not be replaced (it holds something the harness did not write).
    The lock serializes renames into the parent, so two writers of one path never race
    (the last one wins, nothing is left behind)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    old: Path | None = None
    try:
        yield tmp
        with file_lock(out.parent):
            if check is not None:
                check(out)
            if out.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                os.replace(out, old / "x")
            os.replace(tmp, out)
    finally:
        for leftover in (tmp, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


def atomic_write_texts(texts: dict[Path, str]) -> None:
    """Write several files as one: every text goes to a temporary sibling first, and the
    renames (which need no space) follow only once all are written, so a full disk or an
    interrupt leaves either all old files or all new ones (a table's .md/.tex/.json)."""
    tmps: list[tuple[str, Path]] = []
    try:
        for path, text in texts.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            tmps.append((tmp, path))
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
        while tmps:
            tmp, path = tmps[0]
            os.replace(tmp, path)
            tmps.pop(0)
    finally:
        for tmp, _ in tmps:
            if os.path.exists(tmp):
                os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file via a temporary sibling and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
