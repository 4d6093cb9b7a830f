"""Tables that mean what their captions say: the cold split in time order, few-shot
shares of what each system trains on, and cross-dataset overlap found by behaviour (the
entropy rule's last step: tests/test_molorec_mixture.py)."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from bench.runner import cell_key, ensure_protocol
from molorec import template as T
from molorec.artifacts import ArtifactBuilder
from molorec.backbone import train_tokenizer
from molorec.finetune2 import SecondFinetune
from molorec.instructions import kept
from molorec.systems import MoLoRec, MoLoRecS, TALLRec
from protocols.build import build_protocol
from protocols.errors import ProtocolError
from protocols.files import load_protocol, read_jsonl
from protocols.options import ProtocolOptions
from protocols.raw_formats import load_movielens_dat  # noqa: F401 - the format written below
from tests.conftest import write_atomic_dataset

# -- (a) the cold split in time order ------------------------------------------------------


@pytest.fixture(scope="module")
def interleaved(tmp_path_factory):
    """60 users over 200 items, 25 events each at distinct timestamps, so a cold item
    usually sits in the middle of a user's history."""
    rng = np.random.default_rng(3)
    lines = []
    for u in range(60):
        for t, i in enumerate(rng.choice(200, 25, replace=False)):
            lines.append(f"u{u}\ti{i}\t4\t{10_000 + 100 * t + u}")
    root = tmp_path_factory.mktemp("interleaved")
    return write_atomic_dataset(root, lines, [f"i{i}\tFilm {i}" for i in range(200)], "ilv")


def _times(data_dir) -> dict[tuple[str, str], float]:
    rows = (data_dir / "ilv.inter").read_text().splitlines()[1:]
    return {(u, i): float(ts) for u, i, _, ts in (r.split("\t") for r in rows)}


@pytest.mark.parametrize("setting", ["cold", "fewshot-cold-20"])
def test_every_cold_test_users_history_precedes_the_positive(interleaved, tmp_path, setting):
    m = build_protocol("ilv", setting, 0, tmp_path / "p", data_path=interleaved, kcore=2,
                       cold_fraction=0.3)
    when = _times(interleaved)
    p = load_protocol(tmp_path / "p")
    train = {s.user: s.items for s in p.data.train}
    valid = dict(zip((r.user for r in p.valid.requests), p.valid.positives, strict=True))
    assert len(p.test_requests) > 20
    for req, pos in zip(p.test_requests, p.test_positives(), strict=True):
        t_pos = when[(req.user, pos)]
        assert req.history == train[req.user] + (valid[req.user],)
        assert all(when[(req.user, i)] < t_pos for i in req.history), req.user
    # what was left out is counted: the non-cold events after a test positive (the raw
    # file also holds events that the 2-core and cold items not drawn as candidates add)
    cold = _cold_items(p)
    later = {}
    for req, pos in zip(p.test_requests, p.test_positives(), strict=True):
        n = sum(1 for (u, i), t in when.items()
                if u == req.user and t > when[(u, pos)] and i not in cold)
        if n:
            later[req.user] = n
    c = m["counts"]
    assert 0.9 * sum(later.values()) <= c["later_events_left_out"] <= sum(later.values())
    assert len(p.test_requests) // 2 < c["test_users_later_events_left_out"] <= len(later)


def _cold_items(p) -> set[str]:
    return {c for r in p.test_requests for c in r.candidates}


def test_cold_items_stay_out_of_training_and_validation(interleaved, tmp_path):
    build_protocol("ilv", "cold", 0, tmp_path / "p", data_path=interleaved, kcore=2,
                   cold_fraction=0.3)
    p = load_protocol(tmp_path / "p")
    cold = _cold_items(p)
    assert not cold & {i for s in p.data.train for i in s.items}
    assert not cold & set(p.valid.positives)


def test_an_old_protocol_is_rebuilt_and_the_run_says_why(tmp_path):
    """A protocol written by version 1 of the cold split's code is not reused; a few-shot
    cell's key changes with the split version while a warm cell's does not."""
    opts = ProtocolOptions()
    root = ensure_protocol(tmp_path, "ml-100k", "cold", 0, opts, log=lambda s: None)
    mpath = root / "manifest.json"
    m = json.loads(mpath.read_text())
    assert m["split_version"] == 2
    del m["split_version"]  # as version 1 wrote it
    mpath.write_text(json.dumps(m))
    said = []
    ensure_protocol(tmp_path, "ml-100k", "cold", 0, opts, log=said.append)
    assert said and "version 1 of the cold split's code" in said[0], said
    assert json.loads(mpath.read_text())["split_version"] == 2

    files = {"train.jsonl": "x"}
    old = cell_key(TALLRec, {}, 0, {"files": files})
    assert cell_key(TALLRec, {}, 0, {"files": files, "split_version": 1}) == old  # warm
    assert cell_key(TALLRec, {}, 0, {"files": files, "split_version": 2}) != old
    # MoLoRec's entropy rule changed (version 2): its cells are not reused
    assert MoLoRec.version == 2 and TALLRec.version == 1

    class Before(MoLoRec):
        version = 1

    Before.__qualname__ = MoLoRec.__qualname__
    assert cell_key(MoLoRec, {}, 0, {"files": files}) != cell_key(Before, {}, 0,
                                                                  {"files": files})


def test_a_corpus_built_by_the_old_overlap_rule_is_rebuilt(tmp_path):
    tgt, src, _ = _ml_pair(tmp_path)
    opts = ProtocolOptions(kcore=2, general_from=("ml-10m",))
    kw = {"data_path": tgt, "general_paths": {"ml-10m": str(src)}}
    root = ensure_protocol(tmp_path / "out", "ml-1m", "warm", 0, opts, log=lambda s: None, **kw)
    mpath = root / "manifest.json"
    m = json.loads(mpath.read_text())
    assert m["general_overlap_rule"] == 2
    del m["general_overlap_rule"]  # as the id-only rule wrote it
    mpath.write_text(json.dumps(m))
    said = []
    ensure_protocol(tmp_path / "out", "ml-1m", "warm", 0, opts, log=said.append, **kw)
    assert said and "overlap removed by rule version 1" in said[0], said


# -- (b) few-shot shares of what each system trains on ------------------------------------

SHARES = (10, 20, 30)


@pytest.fixture(scope="module")
def fewshot_data(protocol_dirs):
    data = {s: load_protocol(protocol_dirs[s]).data
            for s in ("warm", *(f"fewshot-{p}" for p in SHARES))}
    texts = [t + "\n" for t in data["warm"].titles.values()] + list(T.template_texts()) * 5
    return data, T.Encoder(train_tokenizer(texts, 400))


@pytest.mark.parametrize("profile", ["cpu", "paper"])
@pytest.mark.parametrize("cls,part", [(TALLRec, "tallrec"), (MoLoRecS, "specific"),
                                      (SecondFinetune, "finetune2")])
def test_fewshot_trains_on_its_share_of_the_full_settings_examples(fewshot_data, tmp_path,
                                                                  profile, cls, part):
    """At p% a row trains on p% of what it trains on in warm (within 3 binomial standard
    deviations, plus one), whatever its caps; 10 % inside 20 % inside 30 % inside warm."""
    data, enc = fewshot_data
    cfg = cls.config_for(profile)

    def examples(setting):
        built = ArtifactBuilder(copy.deepcopy(cfg), 0, tmp_path, {}).target_examples(
            data[setting], part, enc)
        return [(e.prompt, e.answer) for e in kept(built)], len(built)

    full, n_full = examples("warm")
    assert len(full) == n_full
    before = set(full)
    for p in SHARES:
        got, base = examples(f"fewshot-{p}")
        assert base == n_full  # the caps choose among the same examples
        expected = p / 100 * n_full
        tolerance = 3 * math.sqrt(n_full * p / 100 * (1 - p / 100)) + 1
        assert abs(len(got) - expected) <= tolerance, (p, len(got), n_full)
        assert set(got) <= before  # a subset of warm's examples
    shares = [set(examples(f"fewshot-{p}")[0]) for p in SHARES]
    assert shares[0] <= shares[1] <= shares[2]


def test_recformer_samples_a_share_of_its_full_setting_samples():
    """RecFormer draws `per_user` positions per user: of a few-shot share only those the
    share kept, among the very draws of the full setting (a cap drawn after the share
    would bind at every share)."""
    from baselines._textseq import ItemVocab
    from baselines.recformer import sample_pairs
    from bench.api import UserSequence

    rng = np.random.default_rng(0)
    items = [str(i) for i in range(300)]
    seqs = [tuple(rng.choice(items, 30, replace=False)) for _ in range(400)]
    vocab = ItemVocab({i: f"Film {i}" for i in items})
    keys = rng.random((400, 30))

    def pairs(share):
        data = [UserSequence(f"u{n}", s, None if share is None else tuple(
            t for t in range(1, 30) if keys[n, t] < share)) for n, s in enumerate(seqs)]
        hists, targets = sample_pairs(data, vocab, 2, 10, np.random.default_rng(1))
        return {(tuple(h), int(t)) for h, t in zip(hists, targets, strict=True)}

    full = pairs(None)
    shares = [pairs(p) for p in (0.1, 0.2, 0.3)]
    assert shares[0] <= shares[1] <= shares[2] <= full
    for p, got in zip((0.1, 0.2, 0.3), shares, strict=True):
        assert abs(len(got) / len(full) - p) < 0.05, (p, len(got), len(full))


# -- (c) cross-dataset overlap found by behaviour -----------------------------------------


def _write_ml(root, ratings: list[tuple[int, int, int]], n_movies: int, name: str):
    """MovieLens .dat files (users, movies, ratings) with the given (user, movie, time)."""
    root.mkdir(parents=True, exist_ok=True)
    users = sorted({u for u, _, _ in ratings})
    (root / "users.dat").write_text("".join(f"{u}::M::25::1::00000\n" for u in users))
    (root / "movies.dat").write_text("".join(
        f"{m}::Film number {m} ({1950 + m % 50})::Drama\n" for m in range(1, n_movies + 1)),
        encoding="latin-1")
    (root / "ratings.dat").write_text("".join(f"{u}::{m}::4::{t}\n" for u, m, t in ratings))
    return root


def _ml_pair(tmp_path, shared: int = 6):
    """A target `ml-1m` (users 1..40) and a source `ml-10m` (users 1..80) whose numbering
    is unrelated; `shared` target users are in the source too, under other ids, with the
    same ratings at the same seconds plus some of their own."""
    rng = np.random.default_rng(5)
    target, source, people = [], [], {}
    for u in range(1, 41):
        for j, m in enumerate(rng.choice(120, 15, replace=False) + 1):
            target.append((u, int(m), 900_000_000 + 1000 * u + 17 * j))
    for s in range(1, 81):  # source users that are nobody in the target
        for j, m in enumerate(rng.choice(120, 12, replace=False) + 1):
            source.append((s, int(m), 900_000_000 + 1000 * ((s * 7) % 40 + 1) + 17 * j))
    for k, u in enumerate(rng.choice(40, shared, replace=False) + 1):
        sid = 81 + k * 3  # a different id in the source
        people[int(u)] = sid
        mine = [r for r in target if r[0] == u]
        for _, m, t in mine[:10]:
            source.append((sid, m, t))
        for j, m in enumerate(rng.choice(np.arange(121, 140), 4, replace=False)):
            source.append((sid, int(m), 950_000_000 + j))
    tgt = _write_ml(tmp_path / "ml-1m", target, 120, "ml-1m")
    src = _write_ml(tmp_path / "ml-10m", source, 140, "ml-10m")
    return tgt, src, people


def test_the_same_people_are_found_by_behaviour_across_movielens_datasets(tmp_path):
    tgt, src, people = _ml_pair(tmp_path)
    m = build_protocol("ml-1m", "warm", 0, tmp_path / "p", data_path=tgt, kcore=2,
                       general_from=("ml-10m",), general_paths={"ml-10m": src})
    c = m["counts"]
    assert c["general_users_removed_by_behaviour"] == len(people)
    assert c["general_users_removed_by_id"] == 0  # MovieLens ids are not one space
    general = {r["user"] for r in read_jsonl(tmp_path / "p" / "general.jsonl")}
    assert not general & {f"ml-10m:{s}" for s in people.values()}
    # the unrelated users stay, including those whose ids equal a target user's
    assert general == {f"ml-10m:{s}" for s in range(1, 81)}


def test_an_empty_general_corpus_is_an_error(tmp_path):
    """A source that is a copy of the target loses every user to the overlap: the build
    refuses, naming the source and its counts, and writes nothing."""
    tgt, _, _ = _ml_pair(tmp_path)
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    for f in tgt.iterdir():
        (copy_dir / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ProtocolError, match=r"ml-10m: 40 users .*40 by behaviour"):
        build_protocol("ml-1m", "warm", 0, tmp_path / "p", data_path=tgt, kcore=2,
                       general_from=("ml-10m",), general_paths={"ml-10m": copy_dir})
    assert not (tmp_path / "p").exists()
