"""The one artifact store: content-addressed, atomic, built once per key even when
workers ask at the same time; the digests every key is made of."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
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


def _build_in_child(root, count, hold, killed: bool):
    """Run in a forked process: build the artifact, announcing itself in `count`; while
    `hold` exists, keep building (a slow training). `killed`: write half, then wait to be
    killed."""

    def build(out):
        with open(count, "a") as f:
            f.write(f"{os.getpid()}\n")
        (out / "weights.bin").write_bytes(b"half")
        while hold.exists():
            time.sleep(0.02)
        if killed:
            time.sleep(600)  # SIGKILLed here, mid-build
        (out / "weights.bin").write_bytes(b"whole")

    Store(root).ensure("m", {"k": 3}, build)


def _wait_for(cond, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_second_process_waits_for_the_build_instead_of_building_again(tmp_path):
    """The per-key lock holds across processes (flock), not only across threads."""
    ctx = multiprocessing.get_context("fork")
    count, hold = tmp_path / "builds.txt", tmp_path / "hold"
    hold.touch()
    first = ctx.Process(target=_build_in_child, args=(tmp_path / "s", count, hold, False))
    first.start()
    _wait_for(count.exists)  # the first process holds the lock, mid-build
    second = ctx.Process(target=_build_in_child, args=(tmp_path / "s", count, hold, False))
    second.start()
    time.sleep(0.5)
    assert second.is_alive(), "the second process must be waiting on the lock"
    assert not Store.is_built(Store(tmp_path / "s").path("m", {"k": 3}))
    hold.unlink()
    first.join(30)
    second.join(30)
    assert first.exitcode == second.exitcode == 0
    assert len(count.read_text().split()) == 1, "built once"
    path = Store(tmp_path / "s").path("m", {"k": 3})
    assert (path / "weights.bin").read_bytes() == b"whole"


def test_a_builder_killed_mid_build_leaves_no_lock_and_no_half_artifact(tmp_path):
    ctx = multiprocessing.get_context("fork")
    count, hold = tmp_path / "builds.txt", tmp_path / "hold"
    hold.touch()
    child = ctx.Process(target=_build_in_child, args=(tmp_path / "s", count, hold, True))
    child.start()
    _wait_for(count.exists)
    hold.unlink()
    time.sleep(0.2)  # it has written half of its artifact and sleeps
    os.kill(child.pid, signal.SIGKILL)
    child.join(30)
    store = Store(tmp_path / "s")
    path = store.path("m", {"k": 3})
    assert not store.is_built(path) and not path.exists(), "nothing half-written is visible"
    assert [p for p in path.parent.iterdir() if ".partial-" in p.name], "its partial dir"

    builds = []
    done = threading.Event()

    def build(out):
        builds.append(1)
        (out / "weights.bin").write_bytes(b"whole")

    def ensure():
        store.ensure("m", {"k": 3}, build)
        done.set()

    threading.Thread(target=ensure, daemon=True).start()
    assert done.wait(30), "the dead builder's lock must not block the next one"
    assert builds == [1] and (path / "weights.bin").read_bytes() == b"whole"
    assert not [p for p in path.parent.iterdir() if ".partial-" in p.name], "leftover removed"
