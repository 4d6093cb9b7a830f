"""Failure isolation and errors a user can act on: a failing system leaves the other rows
rendered and the exit code non-zero; bad options and download trouble are one clear line."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

from bench import registry
from bench.api import System
from bench.cli import main
from bench.runner import run_table
from protocols.download import DownloadError, download_dataset

QUIET = {"log": lambda s: None}


class _FitFails(System):
    name = "FitFails"
    group = "Traditional"

    def fit(self, data, valid):
        raise RuntimeError("out of memory (simulated)")

    def score(self, requests):
        return np.zeros((len(requests), 30))


class _ScoreFails(_FitFails):
    name = "ScoreFails"

    def fit(self, data, valid):
        pass

    def score(self, requests):
        raise ValueError("boom")


@pytest.fixture()
def failing(monkeypatch):
    monkeypatch.setitem(registry.BUILTIN, "FitFails", f"{__name__}:_FitFails")
    monkeypatch.setitem(registry.BUILTIN, "ScoreFails", f"{__name__}:_ScoreFails")


def test_failed_systems_are_marked_and_the_rest_rendered(tmp_path, failing, capsys):
    out = tmp_path / "out"
    rc = main(["run", "--table", "warm", "--profile", "smoke", "--systems",
               "Random,FitFails,Pop,ScoreFails", "--out", str(out)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "FitFails on ml-100k (warm), seed 0: RuntimeError: out of memory" in err
    assert "ScoreFails on ml-100k (warm), seed 0: ValueError: boom" in err
    md = (out / "warm.md").read_text()
    assert "| FitFails | failed | failed |" in md and "| ScoreFails | failed |" in md
    assert "| Random | 0." in md and "| Pop | 0." in md
    assert not (out / "cells" / "ml-100k" / "warm" / "FitFails").exists()
    failures = json.loads((out / "warm.failures.json").read_text())
    assert {f["system"] for f in failures} == {"FitFails", "ScoreFails"}
    assert "Traceback" in failures[0]["traceback"]
    assert json.loads((out / "warm.json").read_text())["rows"][0]["failed"] is True
    # report keeps marking them until a run succeeds
    (out / "warm.md").unlink()
    assert main(["report", "--out", str(out)]) == 0
    assert "| FitFails | failed |" in (out / "warm.md").read_text()


class _FitsNow(_FitFails):
    """FitFails, fixed."""

    def fit(self, data, valid):
        pass


def test_a_failure_a_later_unfinished_run_computed_is_not_marked(tmp_path, failing,
                                                                 monkeypatch):
    """A run killed before it rewrote warm.failures.json leaves the older run's record;
    `report` does not mark a failed row whose cells have been computed since."""
    import bench.runner

    out = tmp_path / "out"
    argv = ["--table", "warm", "--profile", "smoke", "--systems", "Random,FitFails,ScoreFails",
            "--out", str(out)]
    assert main(["run", *argv]) == 1
    monkeypatch.setitem(registry.BUILTIN, "FitFails", f"{__name__}:_FitsNow")
    monkeypatch.setattr(bench.runner, "_record_failures", lambda *a: None)  # killed late
    main(["run", *argv])
    assert {f["system"] for f in json.loads((out / "warm.failures.json").read_text())} == {
        "FitFails", "ScoreFails"}, "the older record is still there"
    assert main(["report", "--out", str(out)]) == 0
    rows = {line.split("|")[2].strip(): line for line in
            (out / "warm.md").read_text().splitlines() if line.startswith("| ")}
    assert "failed" not in rows["FitFails"] and "0.0" in rows["FitFails"]
    assert "| ScoreFails | failed |" in rows["ScoreFails"]


def test_keep_going_false_reraises(tmp_path, failing):
    with pytest.raises(ValueError, match="boom"):
        run_table("warm", "smoke", tmp_path, systems=["ScoreFails"], keep_going=False, **QUIET)


def test_every_system_failing_renders_nothing_and_exits_nonzero(tmp_path, failing, capsys):
    assert main(["run", "--table", "warm", "--profile", "smoke", "--systems", "FitFails",
                 "--out", str(tmp_path / "out")]) == 1
    assert "no table" in capsys.readouterr().err
    assert not (tmp_path / "out" / "warm.md").exists()


@pytest.mark.parametrize("args, message", [
    (["protocol", "build", "--dataset", "ml-100k", "--setting", "cold", "--cold-fraction",
      "1.5"], "--cold-fraction must be a number strictly between 0 and 1"),
    (["protocol", "build", "--dataset", "ml-100k", "--setting", "cold", "--cold-fraction",
      "nan"], "--cold-fraction must be"),
    (["protocol", "build", "--dataset", "ml-100k", "--setting", "cold", "--cold-fraction",
      "1.0"], "--cold-fraction must be"),
    (["protocol", "build", "--dataset", "ml-100k", "--setting", "warm", "--seed", "-1"],
     "--seed must be an integer from 0"),
    (["protocol", "build", "--dataset", "ml-100k", "--setting", "warm", "--max-users", "0"],
     "--max-users must be an integer >= 1"),
    (["protocol", "build", "--dataset", "ml-100k", "--setting", "warm", "--kcore", "0"],
     "--kcore must be an integer >= 1"),
    (["run", "--table", "warm", "--seeds", ","], "--seeds is empty"),
    (["run", "--table", "warm", "--seeds", "-1"], "--seeds must be integers from 0"),
    (["run", "--table", "warm", "--seeds", "0,0"], "--seeds names 0 more than once"),
    (["run", "--table", "warm", "--systems", ","], "--systems is empty"),
    (["run", "--table", "warm", "--datasets", ","], "--datasets is empty"),
    (["run", "--table", "warm", "--datasets", "ml-100k,ml-1m", "--data-path", "x"],
     "--data-path is the directory of one dataset"),
    (["data", "download", "ml-1mm"], "Did you mean 'ml-1m'"),
    (["data", "download", "ml-1m", "--timeout", "0"], "--timeout must be a positive number"),
])
def test_bad_options_are_one_clear_line(tmp_path, capsys, args, message):
    if args[0] == "data":
        args = [*args, "--dest", str(tmp_path / "data")]
    else:
        args = [*args, "--out", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == [], "nothing written"


def test_report_on_a_missing_or_empty_out(tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", "--out", str(tmp_path)]) == 2
    assert "no stored cells" in capsys.readouterr().err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_download_is_an_error_line_and_leaves_no_directory(tmp_path, capsys,
                                                                   monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    dest = tmp_path / "data"
    assert main(["data", "download", "ml-1m", "--dest", str(dest), "--base-url",
                 f"http://127.0.0.1:{_closed_port()}", "--timeout", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: could not reach") and "Traceback" not in err
    assert not dest.exists()


def test_silent_host_times_out_with_timeout(tmp_path, monkeypatch):
    """A host that accepts the connection and never answers: bounded by `timeout`."""
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)  # the kernel completes the handshake; nobody ever reads or writes
        port = silent.getsockname()[1]
        with pytest.raises(DownloadError, match="could not reach"):
            download_dataset("ml-1m", tmp_path / "data", base_url=f"http://127.0.0.1:{port}",
                             progress=False, timeout=0.5)
    assert not (tmp_path / "data").exists()


def test_an_unbuildable_setting_fails_its_cells_not_the_table(tmp_path, capsys):
    """Smoke's cold pool (20 % of ML-100K's items after the 80-user sample) is too small
    for 99 negatives: the few-shot table keeps its three warm shares, leaves out the three
    cold ones with the reason in the caption and OUT/<table>.not_built.json, and exits 1;
    a table with no buildable setting is still the error it was (exit 2)."""
    out = tmp_path / "run"
    rc = main(["run", "--table", "fewshot", "--profile", "smoke", "--systems", "Random,Pop",
               "--negatives", "99", "--out", str(out)])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.count("not built") == 3 and "fewshot-cold-10" in err
    unbuilt = json.loads((out / "fewshot-n99.not_built.json").read_text())
    assert sorted(unbuilt) == [f"ml-100k/fewshot-cold-{p}" for p in (10, 20, 30)]
    assert all("pool" in why for why in unbuilt.values())
    md = (out / "fewshot-n99.md").read_text()
    assert "Not built on this data" in md and "fewshot-cold-20" in md
    assert sorted(p.name for p in (out / "cells/ml-100k").iterdir()) == [
        f"fewshot-{p}-n99" for p in (10, 20, 30)]
    # `report` rebuilds the same caption from the stored files
    (out / "fewshot-n99.md").unlink()
    assert main(["report", "--out", str(out), "--table", "fewshot", "--negatives", "99"]) == 0
    assert "Not built on this data" in (out / "fewshot-n99.md").read_text()
    # a table whose only setting cannot be built is the one-line error it was
    assert main(["run", "--table", "cold", "--profile", "smoke", "--systems", "Random",
                 "--negatives", "99", "--out", str(out)]) == 2
    assert "pool" in capsys.readouterr().err
