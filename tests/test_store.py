"""The one artifact store: content-addressed, atomic, built once per key even when
workers ask at the same time; the digests every key is made of."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import pytest

from molorec import cache
from protocols.data import UserSequence
from protocols.digest import digest, sequences_digest
from protocols.store import DONE, Store


def test_parallel_workers_build_an_artifact_once(tmp_path):
    store, calls, paths = Store(tmp_path), [], []

    def build(out):
        calls.append(1)
        time.sleep(0.2)  # long enough for every other worker to arrive and wait
        (out / "weights.bin").write_bytes(b"w")

    workers = [threading.Thread(target=lambda: paths.append(store.ensure("m", {"k": 1}, build)))
               for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert calls == [1] and len(set(paths)) == 1
    assert (paths[0] / "weights.bin").read_bytes() == b"w"
    assert json.loads((paths[0] / DONE).read_text()) == {"k": 1}
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [paths[0].name]


def test_a_failed_build_leaves_nothing_and_a_leftover_is_replaced(tmp_path):
    store = Store(tmp_path)

    def fail(out):
        (out / "half").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        store.ensure("m", {"k": 2}, fail)
    assert list((tmp_path / "m").iterdir()) == []
    leftover = store.path("m", {"k": 2})
    leftover.mkdir()
    (leftover / "half").write_text("x")  # a killed build from an older version
    out = store.ensure("m", {"k": 2}, lambda o: (o / "full").write_text("y"))
    assert sorted(p.name for p in out.iterdir()) == sorted([DONE, "full"])


def test_molorec_cache_keeps_its_layout(tmp_path):
    """Artifacts built before the store keep their paths (and so are reused)."""
    key = {"what": "general", "lr": 0.002, "titles": "é"}
    want = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    assert cache.stable_hash(key) == digest(key) == want
    assert cache.artifact_path(tmp_path, "lora-general", key) == (
        tmp_path / "molorec" / "lora-general" / want)


def test_sequences_digest_covers_targets_and_titles():
    a = [UserSequence("u", ("1", "2", "3"))]
    b = [UserSequence("u", ("1", "2", "3"), targets=(2,))]
    titles = {"1": "A", "2": "B", "3": "C"}
    assert sequences_digest(a) != sequences_digest(b)
    assert sequences_digest(a, titles) != sequences_digest(a, {**titles, "3": "D"})
    assert sequences_digest(a, titles) == sequences_digest(list(a), dict(titles))
