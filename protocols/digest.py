"""Content digests, one implementation each. Every cache key, manifest hash and cell
hash of the harness (and of the systems) is one of these, so equal content always
gives an equal digest."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from protocols.data import UserSequence


def digest(obj: Any) -> str:
    """sha256 of canonical JSON (sorted keys; non-JSON values by str): equal settings
    give equal keys."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sequences_digest(sequences: Sequence[UserSequence],
                     titles: Mapping[str, str] | None = None) -> str:
    """sha256 of sequences (with their targets) and, when given, the titles of their
    items: the part of a cache key that covers a corpus."""
    h = hashlib.sha256()
    used: set[str] = set()
    for s in sequences:
        h.update(json.dumps([s.user, list(s.items), s.targets]).encode())
        used.update(s.items)
    if titles is not None:
        h.update(json.dumps(sorted((i, titles[i]) for i in used)).encode())
    return h.hexdigest()
