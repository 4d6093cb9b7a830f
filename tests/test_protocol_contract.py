"""The protocol contract: files, determinism, candidate validity, splits."""

from __future__ import annotations

import json

import pytest

from protocols.build import build_protocol
from protocols.files import FILES, load_protocol, read_jsonl


def _rows(d, name):
    return read_jsonl(d / name)


def test_files_and_manifest(protocol_dirs):
    d = protocol_dirs["warm"]
    m = json.loads((d / "manifest.json").read_text())
    assert set(m["files"]) == set(FILES)
    assert m["dataset"] == "ml-100k" and m["setting"] == "warm" and m["seed"] == 0
    assert len(m["candidates_sha256"]) == 64
    assert m["counts"]["test_users"] == m["counts"]["valid_users"] > 400
    load_protocol(d)  # hashes verify


def test_same_seed_byte_identical_other_seed_differs(protocol_dirs, tmp_path):
    build_protocol("ml-100k", "warm", 0, tmp_path / "again")
    for name in (*FILES, "manifest.json"):
        again = (tmp_path / "again" / name).read_bytes()
        assert again == (protocol_dirs["warm"] / name).read_bytes()
    build_protocol("ml-100k", "warm", 1, tmp_path / "seed1")
    assert (tmp_path / "seed1" / "test_candidates.jsonl").read_bytes() != (
        protocol_dirs["warm"] / "test_candidates.jsonl").read_bytes()


@pytest.mark.parametrize("setting", ["warm", "cold", "fewshot-10"])
def test_candidates_are_valid(protocol_dirs, setting):
    d = protocol_dirs[setting]
    train = {r["user"]: r["items"] for r in _rows(d, "train.jsonl")}
    valid = {r["user"]: r for r in _rows(d, "valid_candidates.jsonl")}
    test = {r["user"]: r for r in _rows(d, "test_candidates.jsonl")}
    titles = {r["item"] for r in _rows(d, "items.jsonl")}
    for part in (valid, test):
        for user, r in part.items():
            c = r["candidates"]
            assert len(c) == 30 and len(set(c)) == 30
            assert c.count(r["positive"]) == 1
            assert set(c) <= titles
            user_items = set(train[user]) | {valid[user]["positive"]}
            if user in test:
                user_items.add(test[user]["positive"])
            negatives = set(c) - {r["positive"]}
            assert not negatives & user_items, "a negative is an item of the user"
    # the positive is not always in the same slot: candidates are shuffled
    slots = {r["candidates"].index(r["positive"]) for r in test.values()}
    assert len(slots) > 10


def test_negatives_exclude_all_user_items_against_raw_data(protocol_dirs):
    """Independent check against the raw file: no negative was ever rated by the user."""
    from protocols.datasets import embedded_ml100k

    rated: dict[str, set[str]] = {}
    lines = (embedded_ml100k() / "ml-100k.inter").read_text().splitlines()[1:]
    for line in lines:
        u, i, *_ = line.split("\t")
        rated.setdefault(u, set()).add(i)
    for r in _rows(protocol_dirs["warm"], "test_candidates.jsonl"):
        negatives = set(r["candidates"]) - {r["positive"]}
        assert not negatives & rated[r["user"]]
        assert r["positive"] in rated[r["user"]]


def test_warm_is_leave_one_out_in_time_order(protocol_dirs):
    from protocols.datasets import embedded_ml100k

    events: dict[str, list[tuple[float, int, str]]] = {}
    lines = (embedded_ml100k() / "ml-100k.inter").read_text().splitlines()[1:]
    for n, line in enumerate(lines):
        u, i, _, ts = line.split("\t")
        events.setdefault(u, []).append((float(ts), n, i))
    d = protocol_dirs["warm"]
    valid = {r["user"]: r["positive"] for r in _rows(d, "valid_candidates.jsonl")}
    test = {r["user"]: r["positive"] for r in _rows(d, "test_candidates.jsonl")}
    rows = _rows(d, "train.jsonl")
    kept = {i for r in rows for i in r["items"]} | set(valid.values()) | set(test.values())
    for r in rows:  # the k-core filter may drop items: compare on the kept ones
        seq = [i for _, _, i in sorted(events[r["user"]]) if i in kept]  # ties: file order
        assert seq == r["items"] + [valid[r["user"]], test[r["user"]]]


def test_general_corpus_is_user_disjoint(protocol_dirs):
    d = protocol_dirs["warm"]
    general = {r["user"] for r in _rows(d, "general.jsonl")}
    target = {r["user"] for r in _rows(d, "train.jsonl")}
    assert general and target and not general & target


def test_cold_items_unseen_everywhere_in_training(protocol_dirs):
    d = protocol_dirs["cold"]
    test = _rows(d, "test_candidates.jsonl")
    cold = {c for r in test for c in r["candidates"]}
    seen = {i for r in _rows(d, "train.jsonl") for i in r["items"]}
    seen |= {i for r in _rows(d, "general.jsonl") for i in r["items"]}
    seen_valid = {c for r in _rows(d, "valid_candidates.jsonl") for c in r["candidates"]}
    assert not cold & seen, "a cold test item occurs in training or the general corpus"
    assert not cold & seen_valid, "a cold test item occurs in the validation candidates"
    assert len(test) > 100


def test_cold_pool_too_small_is_refused(tmp_path):
    from protocols.errors import ProtocolError

    with pytest.raises(ProtocolError, match="cold pool too small"):
        build_protocol("ml-100k", "cold", 0, tmp_path / "c", cold_fraction=0.01)
    assert not (tmp_path / "c").exists(), "nothing half-written"


def test_fewshot_nested_and_sized(protocol_dirs):
    kept = {}
    for p in (10, 20, 30):
        d = protocol_dirs[f"fewshot-{p}"]
        rows = _rows(d, "train.jsonl")
        kept[p] = {(r["user"], t) for r in rows for t in r["targets"]}
        total = sum(len(r["items"]) - 1 for r in rows)
        assert abs(len(kept[p]) - total * p / 100) <= 1
        assert all(1 <= t < len(r["items"]) for r in rows for t in r["targets"])
        # validation and test are those of the warm setting
        for name in ("valid_candidates.jsonl", "test_candidates.jsonl"):
            assert (d / name).read_bytes() == (protocol_dirs["warm"] / name).read_bytes()
    assert kept[10] < kept[20] < kept[30]


def test_cold_fewshot_thins_the_cold_split_nested(protocol_dirs, tmp_path):
    kept, cold = {}, protocol_dirs["cold"]
    full = {r["user"]: r["items"] for r in _rows(cold, "train.jsonl")}
    for p in (10, 30):
        d = tmp_path / f"c{p}"
        m = build_protocol("ml-100k", f"fewshot-cold-{p}", 0, d)
        rows = _rows(d, "train.jsonl")
        # whole cold-split sequences (so no cold item), with a share of their positions kept
        assert {r["user"]: r["items"] for r in rows} == full
        kept[p] = {(r["user"], t) for r in rows for t in r["targets"]}
        total = sum(len(r["items"]) - 1 for r in rows)
        assert m["counts"]["training_samples_total"] == total
        assert abs(len(kept[p]) - total * p / 100) <= 1
        # validation, test and the general corpus are those of the cold setting
        for name in ("valid_candidates.jsonl", "test_candidates.jsonl", "general.jsonl"):
            assert (d / name).read_bytes() == (cold / name).read_bytes()
    assert kept[10] < kept[30]


def test_loader_sees_targets_and_test_history(protocol_dirs):
    p = load_protocol(protocol_dirs["fewshot-10"])
    assert all(s.targets is not None for s in p.data.train)
    p = load_protocol(protocol_dirs["warm"])
    valid_pos = dict(zip((r.user for r in p.valid.requests), p.valid.positives, strict=True))
    for req in p.test_requests[:20]:
        assert req.history[-1] == valid_pos[req.user]
        assert not hasattr(req, "positive")


def test_titles_unique_and_single_line(protocol_dirs):
    rows = _rows(protocol_dirs["warm"], "items.jsonl")
    titles = [r["title"] for r in rows]
    assert len(set(titles)) == len(titles)
    assert all("\n" not in t and t == t.strip() and t for t in titles)
