"""Cells are verified before use: recorded sha256s, metrics recomputed from the scores.
A damaged cell is named (report refuses it, run recomputes it), never tabulated."""

from __future__ import annotations

import json

import pytest

from bench.cli import main
from bench.results import DamagedCell, load_cell
from bench.runner import run_table
from bench.stored import DamagedCells
from reports.publish import rebuild

QUIET = {"log": lambda s: None}


def _cell(out, system="Pop"):
    return out / "cells" / "ml-100k" / "warm" / system / "seed-0"


def _edit_metrics(cell, value=1.0):
    rows = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r["NDCG@1"] = value
    (cell / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _strip_hashes(cell):
    meta = json.loads((cell / "cell.json").read_text())
    del meta["scores_sha256"], meta["metrics_sha256"]
    (cell / "cell.json").write_text(json.dumps(meta))


def _truncate(cell):
    text = (cell / "scores.jsonl").read_text()
    (cell / "scores.jsonl").write_text(text[: len(text) // 2])


def _edit_scores(cell):
    rows = [json.loads(line) for line in (cell / "scores.jsonl").read_text().splitlines()]
    rows[0]["scores"] = [float(n) for n in range(30)]
    (cell / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_new_cells_record_their_hashes(run_dir):
    meta = json.loads((_cell(run_dir) / "cell.json").read_text())
    assert len(meta["scores_sha256"]) == len(meta["metrics_sha256"]) == 64


@pytest.mark.parametrize("damage, reason", [
    (_truncate, "scores.jsonl does not match the sha256"),
    (_edit_scores, "scores.jsonl does not match the sha256"),
    (_edit_metrics, "metrics.jsonl does not match the sha256"),
    (lambda c: (c / "cell.json").write_text("{not json"), "cell.json is not valid JSON"),
    (lambda c: (c / "metrics.jsonl").unlink(), "metrics.jsonl is missing"),
    # cells of the previous version record no hashes: the recomputation still catches edits
    (lambda c: (_strip_hashes(c), _edit_metrics(c)), r"NDCG@1 is 1.0, recomputed"),
    (lambda c: (_strip_hashes(c), _truncate(c)), "not valid JSON"),
    (lambda c: (_strip_hashes(c), _edit_scores(c)), "recomputed from scores.jsonl"),
])
def test_report_names_a_damaged_cell_and_refuses_it(run_dir, capsys, damage, reason):
    cell = _cell(run_dir)
    damage(cell)
    with pytest.raises(DamagedCell, match=reason):
        load_cell(cell)
    table = (run_dir / "warm.md").read_bytes()
    assert main(["report", "--out", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert f"damaged cell {cell}" in err and "Traceback" not in err
    assert (run_dir / "warm.md").read_bytes() == table, "no table from a damaged cell"


def test_run_recomputes_a_damaged_cell(run_dir):
    good = (_cell(run_dir) / "metrics.jsonl").read_bytes()
    _edit_metrics(_cell(run_dir))
    messages = []
    res = run_table("warm", "smoke", run_dir, systems=["Random", "Pop"], log=messages.append)
    assert any(f"damaged cell {_cell(run_dir)}" in m for m in messages)
    assert (_cell(run_dir) / "metrics.jsonl").read_bytes() == good
    pop = next(r for r in res.results if r.system == "Pop")
    assert pop.mean("NDCG@1") < 0.5 and "1.0000" not in (run_dir / "warm.md").read_text()


def test_old_cells_without_hashes_are_accepted_after_verification(run_dir):
    cell = _cell(run_dir)
    _strip_hashes(cell)
    stamp = (cell / "scores.jsonl").stat().st_mtime_ns
    res = run_table("warm", "smoke", run_dir, systems=["Random", "Pop"], **QUIET)
    assert (cell / "scores.jsonl").stat().st_mtime_ns == stamp, "a cache hit"
    assert "scores_sha256" not in json.loads((cell / "cell.json").read_text())
    assert {r.system for r in res.results} == {"Random", "Pop"}
    assert rebuild(run_dir, "warm", log=lambda s: None)


def test_table_values_come_from_scores_not_stored_metrics(run_dir):
    cell = load_cell(_cell(run_dir))
    stored = [json.loads(line)["NDCG@1"]
              for line in (_cell(run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert cell.values["NDCG@1"].tolist() == pytest.approx(stored)


def test_a_cell_whose_protocol_was_replaced_is_refused(run_dir):
    manifest = next((run_dir / "protocols").rglob("manifest.json"))
    m = json.loads(manifest.read_text())
    m["candidates_sha256"] = "0" * 64
    manifest.write_text(json.dumps(m))
    meta = json.loads((_cell(run_dir) / "cell.json").read_text())
    meta["protocol"] = "/nonexistent"
    (_cell(run_dir) / "cell.json").write_text(json.dumps(meta))
    with pytest.raises(DamagedCells, match="no protocol with its candidates_sha256"):
        rebuild(run_dir, "warm", log=lambda s: None)


def test_an_edited_manifest_is_seen_at_once(run_dir):
    """The parsed candidates are cached per protocol; editing its manifest invalidates it."""
    proto = next((run_dir / "protocols").rglob("manifest.json")).parent
    load_cell(_cell(run_dir), proto)
    m = json.loads((proto / "manifest.json").read_text())
    m["candidates_sha256"] = "f" * 64
    (proto / "manifest.json").write_text(json.dumps(m, indent=1))
    with pytest.raises(DamagedCell, match="the protocol .* has ffffffffffff"):
        load_cell(_cell(run_dir), proto)
