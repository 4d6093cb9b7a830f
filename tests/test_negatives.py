"""--negatives N and full ranking (issue 32): protocol files, the Random floor, full-ranking
metrics against an independent computation, rows left out of full ranking."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from bench import cells as C
from bench.api import ScoreRequest, System, TrainData, Validation
from bench.cells import CellTask, LocalProtocol, compute_cell
from bench.reference import Random
from bench.results import DamagedCell, load_cell, metric_rows
from bench.runner import cell_key, run_table, write_cell
from protocols.build import build_protocol
from protocols.digest import file_sha256
from protocols.errors import OptionError, ProtocolError
from protocols.files import FILES, POOL_FILE, load_protocol, read_jsonl
from protocols.options import negatives_suffix, parse_negatives, split_suffix
from reports.publish import publish_table, rebuild
from tests.conftest import write_atomic_dataset


def _all_items(protocol_dir: Path) -> dict[str, set[str]]:
    """Every item each target user interacted with, from the protocol's own files."""
    seen = {r["user"]: set(r["items"]) for r in read_jsonl(protocol_dir / "train.jsonl")}
    for name in ("valid_candidates.jsonl", "test_candidates.jsonl"):
        for r in read_jsonl(protocol_dir / name):
            seen[r["user"]].add(r["positive"])
    return seen


def test_negatives_99_protocol(protocol_dirs, tmp_path):
    out = tmp_path / "n99"
    m = build_protocol("ml-100k", "warm", 0, out, negatives=99)
    assert m["options"]["negatives"] == 99
    seen = _all_items(out)
    for name in ("valid_candidates.jsonl", "test_candidates.jsonl"):
        rows = read_jsonl(out / name)
        assert len(rows) > 400
        for r in rows:
            cands = r["candidates"]
            assert len(cands) == 100 and len(set(cands)) == 100
            assert r["positive"] in cands
            assert not (set(cands) - {r["positive"]}) & seen[r["user"]]
    # deterministic: the same seed writes the same files; one hashed file per count
    build_protocol("ml-100k", "warm", 0, tmp_path / "again", negatives=99)
    for name in (*FILES, "manifest.json"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes()
    default = json.loads((protocol_dirs["warm"] / "manifest.json").read_text())
    assert "negatives" in default["options"] and default["options"]["negatives"] == 29
    assert m["candidates_sha256"] != default["candidates_sha256"]
    assert m["files"]["train.jsonl"] == default["files"]["train.jsonl"]


def test_cold_pool_too_small_for_the_count_is_refused(tmp_path):
    with pytest.raises(ProtocolError, match="negative pool|cold pool too small"):
        build_protocol("ml-100k", "cold", 0, tmp_path / "c", negatives=99, max_users=80,
                       cold_fraction=0.2)
    assert not (tmp_path / "c").exists()


def test_negatives_option_values():
    assert parse_negatives("99") == 99 and parse_negatives("ALL") == "all"
    for bad in ("0", "-3", "x", "1.5"):
        with pytest.raises(OptionError, match="--negatives"):
            parse_negatives(bad)
    assert negatives_suffix(29) == "" and negatives_suffix(99) == "-n99"
    assert split_suffix("warm-n99") == ("warm", 99) and split_suffix("warm-nall") == (
        "warm", "all")
    assert split_suffix("fewshot-10") == ("fewshot-10", 29) and split_suffix("warm") == (
        "warm", 29)


def test_random_ndcg1_at_99_negatives_is_one_in_a_hundred():
    """20,000 users, 1 + 99 candidates, the positive always in the first column (a
    positional bias would show): NDCG@1 is Bernoulli(1/100) per user, so its mean has a
    standard error of 0.0007; the tolerance 0.003 is over 4 of them."""
    n, width = 20_000, 100
    requests = [ScoreRequest(f"u{i}", ("h",), tuple(f"i{i}-{j}" for j in range(width)))
                for i in range(n)]
    system = Random({}, seed=0)
    scores = np.concatenate([system.score(requests[lo:lo + 1000])
                             for lo in range(0, n, 1000)])
    _, values = metric_rows([r.user for r in requests], [r.candidates[0] for r in requests],
                            [r.candidates for r in requests], scores)
    assert values["NDCG@1"].mean() == pytest.approx(1 / 100, abs=0.003)
    assert values["HR@3"].mean() == pytest.approx(3 / 100, abs=0.005)


# ---------------------------------------------------------------- full ranking


class Modulo(System):
    """Full-ranking test system: score(user, item) = (37 * item + user) mod 7, many ties."""

    name = "Modulo"
    group = "Traditional"
    full_ranking = True

    def fit(self, data: TrainData, valid: Validation) -> None:
        pass

    def score(self, requests: Sequence[ScoreRequest]) -> np.ndarray:
        return np.array([[float((37 * int(c) + int(r.user)) % 7) for c in r.candidates]
                         for r in requests])


def _toy(root: Path) -> Path:
    rng = np.random.default_rng(5)
    lines = []
    for u in range(60):
        items = rng.choice(80, size=int(rng.integers(4, 9)), replace=False)
        lines += [f"{u}\t{i}\t5\t{1000 + 10 * u + t}" for t, i in enumerate(items)]
    return write_atomic_dataset(root, lines, [f"{i}\tItem number {i}" for i in range(80)])


def _expected(scores: list[float], s_pos: float, k: int | None) -> float:
    """NDCG@k (MRR when k is None) under the tie rule, by enumerating the tied ranks."""
    above = sum(s > s_pos for s in scores)
    tied = sum(s == s_pos for s in scores)
    ranks = range(above + 1, above + tied + 2)
    if k is None:
        return sum(1 / r for r in ranks) / len(ranks)
    return sum(1 / np.log2(r + 1) if r <= k else 0.0 for r in ranks) / len(ranks)


@pytest.mark.parametrize("setting", ["warm", "cold"])
def test_full_ranking_matches_numpy(tmp_path, monkeypatch, setting):
    data = _toy(tmp_path / "toy")
    proto_dir = tmp_path / "proto"
    m = build_protocol("toy", setting, 0, proto_dir, data_path=data, kcore=1,
                       negatives="all", cold_fraction=0.5)
    assert POOL_FILE in m["files"]
    proto = load_protocol(proto_dir)
    assert proto.full_ranking
    # the raw data, read independently: every item each user interacted with
    raw: dict[str, set[str]] = {}
    for line in (data / "toy.inter").read_text().splitlines()[1:]:
        u, i, *_ = line.split("\t")
        raw.setdefault(u, set()).add(i)
    pool = [r["item"] for r in read_jsonl(proto_dir / POOL_FILE)]
    target_items = {i for r in read_jsonl(proto_dir / "train.jsonl") for i in r["items"]}
    if setting == "warm":
        assert target_items <= set(pool)
    else:  # cold: the pool is the new items, never seen in training
        assert not target_items & set(pool)
    monkeypatch.setattr(C, "FULL_BATCH_SCORES", 3 * len(pool))  # several batches
    task = CellTask("warm-nall", "toy", setting, "Modulo", 0, "smoke", Modulo, {},
                    cell_key(Modulo, {}, 0, m), str(proto_dir), str(tmp_path / "cache"))
    out = compute_cell(task, LocalProtocol(str(proto_dir)))
    assert not isinstance(out, Exception) and hasattr(out, "texts"), out
    cell = write_cell(tmp_path / "cell", out, proto_dir)
    assert cell.negatives == "all" and cell.n_candidates is None
    rows = read_jsonl(proto_dir / "test_candidates.jsonl")
    assert len(rows) == len(cell.users) > 3
    want = {"NDCG@1": [], "NDCG@3": [], "MRR": []}
    for r in rows:
        u, p = r["user"], r["positive"]
        cands = [i for i in pool if i not in raw[u] or i == p]
        score = {i: float((37 * int(i) + int(u)) % 7) for i in cands}
        others = [score[i] for i in cands if i != p]
        want["NDCG@1"].append(_expected(others, score[p], 1))
        want["NDCG@3"].append(_expected(others, score[p], 3))
        want["MRR"].append(_expected(others, score[p], None))
    for metric, values in want.items():
        np.testing.assert_allclose(cell.values[metric], values, rtol=0, atol=1e-12)
    # the export holds what the ranks depend on; an edited score is caught on reading
    first = json.loads((tmp_path / "cell" / "scores.jsonl").read_text().splitlines()[0])
    assert set(first) == {"user", "positive_score", "at_or_above"}
    path = tmp_path / "cell" / "scores.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    n = next(i for i, r in enumerate(lines) if r["at_or_above"])
    lines[n]["at_or_above"] = lines[n]["at_or_above"][1:]  # one candidate fewer above
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    meta = json.loads((tmp_path / "cell" / "cell.json").read_text())
    meta["scores_sha256"] = file_sha256(path)  # re-signed: only the recomputation can tell
    (tmp_path / "cell" / "cell.json").write_text(json.dumps(meta))
    with pytest.raises(DamagedCell, match="recomputed from scores.jsonl"):
        load_cell(tmp_path / "cell", proto_dir)


def test_full_ranking_leaves_out_systems_without_support(tmp_path):
    out = tmp_path / "run"
    run = publish_table("warm", "smoke", out, systems=["Pop", "P5"], negatives="all",
                        log=lambda s: None, jobs=1)
    assert run.table == "warm-nall" and set(run.left_out) == {"P5"}
    assert {c.system for c in run.results} == {"Pop"}
    assert not (out / "cells" / "ml-100k" / "warm-nall" / "P5").exists()
    assert (out / "protocols" / "ml-100k" / "warm-nall" / "seed-0" / POOL_FILE).is_file()
    md = (out / "warm-nall.md").read_text()
    assert "Left out of full ranking: P5 (" in md and "| P5 |" not in md
    assert "full ranking: each test user ranks every item" in md
    # `report` states it too, from the stored record; the default table is not there
    paths = rebuild(out, "warm-nall", log=lambda s: None)
    assert "Left out of full ranking: P5 (" in paths[0]["md"].read_text()
    assert not (out / "warm.md").exists()
    with pytest.raises(OptionError, match="full-ranking support"):
        run_table("warm", "smoke", out, systems=["P5"], negatives="all", log=lambda s: None)


def test_compare_keeps_each_counts_timings_apart(tmp_path):
    """One --out with warm and warm-n99: compare's seconds are each table's own cells'."""
    from reports.compare import compare, timings

    out = tmp_path / "run"
    for n in (None, 99):
        publish_table("warm", "smoke", out, systems=["Pop", "Random"], negatives=n,
                      log=lambda s: None, jobs=1)
    seen = timings(out)
    assert {k[0] for k in seen} == {"warm", "warm-n99"}
    # a distinct fit time in each table's Pop cell, then compare reads each one's
    for table, seconds in (("warm", 11.0), ("warm-n99", 99.0)):
        seen[(table, "ml-100k", "warm", "Pop", 0)]["fit_seconds"] = seconds
    from bench.stored import finished_cells

    rows = compare(finished_cells(out, lambda s: None), "Random", ["NDCG@1"], seen)
    pop = {r["table"]: r["fit_seconds"] for r in rows if r["system"] == "Pop"}
    assert pop == {"warm": 11.0, "warm-n99": 99.0}
