"""Content-addressed artifact directories under the run's workdir.

`workdir/molorec/<kind>/<sha256 of the key>/` holds one artifact (a backbone, an
adapter); it is built in a temporary sibling and renamed into place, so a reader
never sees half an artifact, and a present directory is reused as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

DONE = "key.json"  # written last: its presence marks a finished artifact


def stable_hash(obj: Any) -> str:
    """sha256 of canonical JSON (sorted keys): equal settings give equal keys."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def artifact_path(workdir: str | Path, kind: str, key: dict[str, Any]) -> Path:
    return Path(workdir) / "molorec" / kind / stable_hash(key)


def is_built(path: Path) -> bool:
    return (Path(path) / DONE).exists()


def cached_dir(workdir: str | Path, kind: str, key: dict[str, Any],
               build: Callable[[Path], None]) -> Path:
    """The artifact for `key`, built by `build(tmp_dir)` unless already present."""
    out = artifact_path(workdir, kind, key)
    if is_built(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name[:12]}.partial-", dir=out.parent))
    try:
        build(tmp)
        (tmp / DONE).write_text(json.dumps(key, sort_keys=True, indent=1, default=str))
        if (out / DONE).exists():  # another process finished first: keep theirs
            return out
        if out.exists():  # an unfinished leftover
            shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
