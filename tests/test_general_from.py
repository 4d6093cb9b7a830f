"""`--general-from`: the domain-general corpus taken from other datasets, with the overlap
removed (target users, target validation/test items), counted, and rebuilt byte for byte."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from bench.cli import main
from bench.runner import run_table
from protocols.build import build_protocol
from protocols.datasets import embedded_ml100k
from protocols.errors import OptionError
from protocols.files import FILES, load_protocol, read_jsonl
from protocols.general_corpus import parse
from tests.conftest import write_atomic_dataset

SHARED = 40  # general items j0..j39 carry the titles of target items i0..i39


def _walks(users, items, per_user, rng):
    lines = []
    for u in users:
        for t, i in enumerate(rng.choice(items, per_user, replace=False)):
            lines.append(f"{u}\t{i}\t5\t{1000 + t}")
    return lines


@pytest.fixture()
def pair(tmp_path):
    """A target `tgt` (u0..u29 over i0..i119) and a source `gen` whose users g0..g39 plus
    two target users (u3, u7) rate j0..j79; j0..j39 have target titles, the rest not."""
    rng = np.random.default_rng(0)
    tgt = write_atomic_dataset(
        tmp_path / "tgt", _walks([f"u{u}" for u in range(30)], [f"i{i}" for i in range(120)],
                                 12, rng), [f"i{i}\tTitle {i}" for i in range(120)], "tgt")
    gen_items = [f"j{i}\t{'Title' if i < SHARED else 'Other'} {i}" for i in range(80)]
    gen = write_atomic_dataset(
        tmp_path / "gen", _walks([*(f"g{u}" for u in range(40)), "u3", "u7"],
                                 [f"j{i}" for i in range(80)], 10, rng), gen_items, "gen")
    return tgt, gen


def _build(pair, out, setting="warm", **kw):
    tgt, gen = pair
    return build_protocol("tgt", setting, 0, out, data_path=tgt, kcore=2,
                          general_from=("gen",), general_paths={"gen": gen}, **kw)


def test_overlap_removed_and_counted(pair, tmp_path, monkeypatch):
    """Both datasets declare one user-id space (as Amazon's do), so u3 and u7 are the
    target's users by id."""
    monkeypatch.setattr("protocols.general_corpus.user_id_space", lambda name: "shared")
    m = _build(pair, tmp_path / "p")
    d = tmp_path / "p"
    general = read_jsonl(d / "general.jsonl")
    train = read_jsonl(d / "train.jsonl")
    positives = {r["positive"] for n in ("valid_candidates.jsonl", "test_candidates.jsonl")
                 for r in read_jsonl(d / n)}
    items = {i for r in general for i in r["items"]}
    # every target user stays a target user; no target user in the corpus
    assert len(train) == 30 and m["counts"]["target_users"] == 30
    assert {r["user"] for r in general} <= {f"gen:g{u}" for u in range(40)}
    # other users' interactions with target items stay whether or not an item is a
    # positive: removing positives only would mark every remaining candidate a negative
    assert items & positives
    # a target item's title maps onto its id; other items get the source's prefix
    target_items = {i for r in train for i in r["items"]} | positives
    want = {f"i{j}" if j < SHARED and f"i{j}" in target_items else f"gen:j{j}"
            for j in range(80)}
    assert items <= want
    assert items & target_items and any(i.startswith("gen:") for i in items)
    titles = [r["title"] for r in read_jsonl(d / "items.jsonl")]
    assert len(set(titles)) == len(titles)
    # the counts, recomputed from the raw source file (its 2-core drops the items rated
    # once; every user keeps 9 or 10 of its 10 ratings)
    raw = [line.split("\t") for line in (pair[1] / "gen.inter").read_text().splitlines()[1:]]
    rated = Counter(i for _, i, *_ in raw)
    raw = [r for r in raw if rated[r[1]] >= 2]
    c = m["counts"]
    assert c["general_users_removed_by_id"] == 2
    assert c["general_users_removed_by_behaviour"] == 0
    assert c["general_interactions_removed_target_users"] == 20
    assert "general_interactions_removed_eval_items" not in c
    assert c["general_interactions_removed_cold_items"] == 0
    assert c["general_interactions"] == sum(len(r["items"]) for r in general)
    assert m["options"]["general_from"] == ["gen"]
    assert set(m["general_source"]["gen"]) == {"gen.inter", "gen.item"}
    assert m["general_sources"] == [{
        "name": "gen", "users": 42, "items": len({i for _, i, *_ in raw}),
        "interactions": len(raw), "users_removed_by_id": 2, "users_removed_by_behaviour": 0,
        "interactions_removed_target_users": 20, "interactions_removed_cold_items": 0}]
    load_protocol(d)  # hashes verify


def test_byte_identical_rebuild_and_cold_items_removed(pair, tmp_path):
    for setting in ("warm", "cold"):
        a, b = tmp_path / f"{setting}-a", tmp_path / f"{setting}-b"
        _build(pair, a, setting, cold_fraction=0.4)
        _build(pair, b, setting, cold_fraction=0.4)
        for name in (*FILES, "manifest.json"):
            assert (a / name).read_bytes() == (b / name).read_bytes(), (setting, name)
    d = tmp_path / "cold-a"
    cold = {c for r in read_jsonl(d / "test_candidates.jsonl") for c in r["candidates"]}
    assert not cold & {i for r in read_jsonl(d / "general.jsonl") for i in r["items"]}
    m = json.loads((d / "manifest.json").read_text())
    assert m["counts"]["general_interactions_removed_cold_items"] > 0


def test_bad_requests_are_refused(pair, tmp_path):
    tgt, gen = pair
    with pytest.raises(OptionError, match="another dataset"):
        build_protocol("tgt", "warm", 0, tmp_path / "x", data_path=tgt,
                       general_from=("tgt",), general_paths={"tgt": tgt})
    with pytest.raises(OptionError, match="more than once"):
        parse(["gen:/a", "gen"])
    assert parse(["a,b:/x/y", "c"]) == (("a", "b", "c"), {"b": "/x/y"})
    assert not (tmp_path / "x").exists()
    # a run refuses it before it takes the results directory
    with pytest.raises(OptionError, match="another dataset"):
        run_table("warm", "smoke", tmp_path / "run", datasets=["ml-100k"],
                  general_from=["ml-100k"])
    assert not (tmp_path / "run").exists()


def test_ml100k_target_with_a_synthetic_general_source(tmp_path, capsys):
    """ML-100K as the target, a synthetic dataset as the source: half of its items are
    ML-100K titles, and two of its users carry ML-100K user ids. MovieLens ids number one
    dataset's users only and the two behave unlike ML-100K's users 1 and 2, so they stay."""
    ml = {}
    for line in (embedded_ml100k() / "ml-100k.item").read_text(
            encoding="utf-8").splitlines()[1:]:
        item, title = line.split("\t")[:2]
        ml[item] = title
    picked = list(ml.values())[:150]
    rng = np.random.default_rng(1)
    items = [f"s{i}\t{picked[i] if i < 150 else f'Synthetic film {i}'}" for i in range(200)]
    users = [*(f"x{u}" for u in range(150)), "1", "2"]
    gen = write_atomic_dataset(tmp_path / "synth", _walks(
        users, [f"s{i}" for i in range(200)], 20, rng), items, "synth")
    out = tmp_path / "p"
    assert main(["protocol", "build", "--dataset", "ml-100k", "--setting", "warm",
                 "--out", str(out), "--general-from", f"synth:{gen}"]) == 0
    printed = json.loads(capsys.readouterr().out)["counts"]
    m = json.loads((out / "manifest.json").read_text())
    assert printed == m["counts"] and m["counts"]["target_users"] == 943
    assert m["counts"]["general_users_removed_by_id"] == 0
    assert m["counts"]["general_users_removed_by_behaviour"] == 0
    assert {"synth:1", "synth:2"} <= {s.user for s in load_protocol(out).data.general}
    p = load_protocol(out)
    positives = set(p.valid.positives) | set(p.test_positives())
    general_items = {i for s in p.data.general for i in s.items}
    assert general_items & positives  # label-blind: positives are not singled out
    assert general_items & set(ml)  # ML-100K titles became ML-100K items
    assert {p.data.titles[i] for i in general_items if i in ml} <= set(picked)


def test_a_run_takes_the_corpus_and_rebuilds_when_a_source_changes(tmp_path):
    """`bench run --general-from`: the protocol records its general sources; a rerun
    reuses it, and a changed source file rebuilds it, saying why."""
    rng = np.random.default_rng(2)
    tgt = write_atomic_dataset(tmp_path / "tgt", _walks(
        [f"u{u}" for u in range(40)], [f"i{i}" for i in range(60)], 20, rng),
        [f"i{i}\tTitle {i}" for i in range(60)], "tgt")
    gen = write_atomic_dataset(tmp_path / "gen", _walks(
        [f"g{u}" for u in range(40)], [f"j{i}" for i in range(60)], 20, rng),
        [f"j{i}\tTitle {i + 30}" for i in range(60)], "gen")
    out = tmp_path / "out"
    args = ["run", "--table", "warm", "--profile", "smoke", "--systems", "Pop", "--datasets",
            "tgt", "--data-path", str(tgt), "--general-from", f"gen:{gen}", "--out", str(out)]
    assert main(args) == 0
    manifest = out / "protocols" / "tgt" / "warm" / "seed-0" / "manifest.json"
    first = json.loads(manifest.read_text())
    assert first["options"]["general_from"] == ["gen"] and "gen" in first["general_source"]
    stamp = manifest.stat().st_mtime_ns
    logs: list[str] = []
    run_table("warm", "smoke", out, datasets=["tgt"], data_path=str(tgt), systems=["Pop"],
              general_from=[f"gen:{gen}"], log=logs.append)
    assert manifest.stat().st_mtime_ns == stamp and not logs
    with open(gen / "gen.inter", "a") as f:
        f.write("g0\tj59\t5\t5000\n")
    run_table("warm", "smoke", out, datasets=["tgt"], data_path=str(tgt), systems=["Pop"],
              general_from=[f"gen:{gen}"], log=logs.append)
    assert any("another general corpus" in line for line in logs)
    assert json.loads(manifest.read_text())["general_source"] != first["general_source"]
