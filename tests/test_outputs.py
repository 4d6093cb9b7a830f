"""Output paths: nothing the harness did not write is deleted or overwritten; one run at a
time per --out; a protocol is reused only for the same data and options."""

from __future__ import annotations

import json
import threading

import pytest

from bench import outdir
from bench.cli import main
from bench.runner import run_table
from protocols.build import build_protocol
from protocols.errors import BusyError, OutputError
from protocols.files import check_protocol_out
from protocols.store import atomic_dir
from reports.publish import publish_table
from tests.conftest import write_atomic_dataset

QUIET = {"log": lambda s: None}


def _toy(root, seed=0, n_users=300, n_items=120, per_user=15):
    import numpy as np

    rng = np.random.default_rng(seed)
    lines = [f"u{u}\ti{i}\t5\t{1000 + t}" for u in range(n_users)
             for t, i in enumerate(rng.choice(n_items, per_user, replace=False))]
    return write_atomic_dataset(root, lines, [f"i{i}\tTitle {i}" for i in range(n_items)])


def _snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_protocol_build_refuses_what_it_did_not_write(tmp_path, capsys):
    data = _toy(tmp_path / "data")
    before = _snapshot(data)
    args = ["protocol", "build", "--dataset", "toy", "--setting", "warm", "--kcore", "2",
            "--data-path", str(data), "--out"]
    # the input directory itself, and a directory inside it
    assert main([*args, str(data)]) == 2
    assert main([*args, str(data / "sub")]) == 2
    assert "overlaps the input directory" in capsys.readouterr().err
    # a file, a foreign directory, a results directory of `run`
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("mine")
    run_dir = tmp_path / "results"
    run_dir.mkdir()
    (run_dir / outdir.MARKER).write_text(json.dumps({"format": outdir.OUT_FORMAT}))
    for target in ("notes.txt", "mine", "results"):
        assert main([*args, str(tmp_path / target)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --out") and "Traceback" not in err
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "mine"
    assert (run_dir / outdir.MARKER).exists()
    assert _snapshot(data) == before
    # absent, empty, and a protocol directory built before: fine (the last is replaced)
    (tmp_path / "empty").mkdir()
    for target in ("new", "empty", "new"):
        assert main([*args, str(tmp_path / target)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_file_appearing_during_a_build_is_not_deleted(tmp_path):
    """The ownership check is repeated just before the swap, under the directory lock."""
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="not a protocol directory"):
        with atomic_dir(out, check=check_protocol_out):
            out.mkdir()
            (out / "mine.txt").write_text("keep")
    assert (out / "mine.txt").read_text() == "keep"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_concurrent_builds_of_one_directory_leave_nothing_behind(tmp_path):
    out, errors = tmp_path / "race", []

    def build():
        try:
            build_protocol("ml-100k", "warm", 0, out, max_users=40)
        except Exception as e:  # noqa: BLE001 (collected and asserted below)
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [p.name for p in tmp_path.iterdir()] == ["race"]


def test_run_refuses_a_foreign_directory_and_adopts_an_old_one(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.csv").write_text("mine")
    with pytest.raises(OutputError, match="not written by molorec-bench"):
        run_table("warm", "smoke", foreign, systems=["Random"], **QUIET)
    assert [p.name for p in foreign.iterdir()] == ["data.csv"]
    # a results directory of the previous version: cells and protocols, no marker yet
    old = tmp_path / "old"
    run_table("warm", "smoke", old, systems=["Random"], **QUIET)
    (old / outdir.MARKER).unlink()
    (old / "notes.md").write_text("mine")
    res = run_table("warm", "smoke", old, systems=["Random"], **QUIET)
    assert res.results and (old / outdir.MARKER).exists()
    assert (old / "notes.md").read_text() == "mine"


def test_a_failed_run_into_a_new_directory_leaves_nothing(tmp_path):
    out = tmp_path / "new"
    with pytest.raises(Exception, match="not found"):
        run_table("warm", "smoke", out, datasets=["toy"], data_path=str(tmp_path / "none"),
                  systems=["Random"], **QUIET)
    assert not out.exists()


def test_second_run_on_one_out_is_refused(tmp_path):
    out = tmp_path / "out"
    with outdir.locked(out):
        with pytest.raises(BusyError, match="in use by another run"):
            run_table("warm", "smoke", out, systems=["Random"], **QUIET)
    run_table("warm", "smoke", out, systems=["Random"], **QUIET)  # released


def test_protocol_is_rebuilt_for_other_data(tmp_path):
    """--data-path A, then B into the same --out: B's candidates, B's numbers."""
    a, b = _toy(tmp_path / "A"), _toy(tmp_path / "B", seed=1)
    out = tmp_path / "out"
    kw = {"datasets": ["toy"], "systems": ["Pop"], **QUIET}
    ra = run_table("warm", "smoke", out, data_path=str(a), **kw)
    rb = publish_table("warm", "smoke", out, data_path=str(b), **kw)
    fresh = run_table("warm", "smoke", tmp_path / "fresh", data_path=str(b), **kw)
    assert ra.results[0].candidates_sha256 != rb.results[0].candidates_sha256
    assert rb.results[0].candidates_sha256 == fresh.results[0].candidates_sha256
    assert rb.results[0].mean("NDCG@3") == fresh.results[0].mean("NDCG@3")
    assert fresh.results[0].candidates_sha256[:12] in (out / "warm.md").read_text()


def test_old_manifest_without_source_is_rebuilt_identically_and_force_rebuilds(tmp_path):
    out = tmp_path / "out"
    run_table("warm", "smoke", out, systems=["Random"], **QUIET)
    proto = next((out / "protocols").rglob("manifest.json")).parent
    files = _snapshot(proto)
    manifest = json.loads((proto / "manifest.json").read_text())
    del manifest["source"]  # as if an older version had not recorded it
    (proto / "manifest.json").write_text(json.dumps(manifest))
    run_table("warm", "smoke", out, systems=["Random"], **QUIET)
    assert _snapshot(proto) == files, "rebuilt byte-identical"
    stamp = (proto / "test_candidates.jsonl").stat().st_mtime_ns
    run_table("warm", "smoke", out, systems=["Random"], force=True, **QUIET)
    assert (proto / "test_candidates.jsonl").stat().st_mtime_ns != stamp
    assert _snapshot(proto) == files
