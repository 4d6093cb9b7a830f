"""What the command line says for the errors it did not raise itself: an operating-system
error it can explain (read-only storage, permission, a file where a directory belongs,
a full disk) and Ctrl-C. Each becomes one line instead of a traceback; the harness writes
every file atomically, so nothing half-written is left to explain (bench.runner,
protocols.store)."""

from __future__ import annotations

import errno
from pathlib import Path

INTERRUPTED = "interrupted: finished cells are kept; rerun the same command to resume"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a process Ctrl-C ended

EXPLAINED = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.ENOSPC,
             errno.EDQUOT, errno.EEXIST}


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest of `path` and its parents that exists and is not a directory."""
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def _under(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return False
    return True


def explain_os_error(e: OSError, option: str | None, value: str | None) -> str | None:
    """One line naming the path and what to do, or None for an error this cannot explain
    (it stays a traceback: a bug to report). `option`/`value`: the command's output option
    (`--out DIR`), whose remedy is to choose another."""
    if e.errno not in EXPLAINED:
        return None
    path = Path(e.filename) if e.filename else (Path(value) if value else None)
    if path is None:
        return None
    ours = option is not None and value is not None and _under(path, Path(value))
    other = f"choose another {option}" if ours else "use another path for it"
    if e.errno == errno.EROFS:
        return f"cannot write {path}: read-only file system; {other} on writable storage"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"cannot write {path}: permission denied; give this user access, or {other}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on device" if e.errno == errno.ENOSPC else "disk quota exceeded"
        return (f"cannot write {path}: {what}; free some space (or {other}) and rerun the "
                "same command: finished cells are kept, nothing was half-written")
    blocker = _file_in_the_way(path)
    if blocker is None:  # EEXIST on a directory, ENOTDIR with nothing in the way: not ours
        return None
    return (f"cannot create {path}: {blocker} is a file where a directory is needed; move it "
            f"away, or {other}")
