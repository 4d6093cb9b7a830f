"""The LLM rows' artifacts in the one artifact store (protocols.store).

`workdir/molorec/<kind>/<sha256 of the key>/` holds one artifact (a backbone, an
adapter), built once under a per-key lock and renamed into place, so a reader never sees
half an artifact and parallel workers never build it twice. These names are thin
wrappers kept for molorec's modules.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from protocols.digest import digest as stable_hash
from protocols.store import DONE, Store

__all__ = ["DONE", "artifact_path", "cached_dir", "is_built", "stable_hash", "store"]


def store(workdir: str | Path) -> Store:
    return Store(Path(workdir) / "molorec")


def artifact_path(workdir: str | Path, kind: str, key: dict[str, Any]) -> Path:
    return store(workdir).path(kind, key)


def is_built(path: Path) -> bool:
    return Store.is_built(path)


def cached_dir(workdir: str | Path, kind: str, key: dict[str, Any],
               build: Callable[[Path], None]) -> Path:
    """The artifact for `key`, built by `build(tmp_dir)` unless already present."""
    return store(workdir).ensure(kind, key, build)
