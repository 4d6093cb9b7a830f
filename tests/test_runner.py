"""The runner: cells, cache, atomic writes, recomputation, plugins, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import registry
from bench.api import System
from bench.results import load_cell, recompute_from_scores
from bench.runner import run_table
from reports.publish import publish_table

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    res = publish_table("warm", "smoke", out, systems=["Random", "Pop"], log=lambda s: None)
    return out, res


def test_table_files_and_hash(small_run):
    out, res = small_run
    md = (out / "warm.md").read_text()
    manifest = json.loads(next((out / "protocols").rglob("manifest.json")).read_text())
    assert manifest["candidates_sha256"][:12] in md
    assert "Random" in md and "Pop" in md
    assert (out / "warm.tex").read_text().count(r"\toprule") == 1


def test_table_value_recomputed_from_scores(small_run):
    """A number in the table equals the metric recomputed from scores.jsonl alone."""
    out, res = small_run
    cell = next(c for c in res.results if c.system == "Pop")
    cell_dir = out / "cells" / "ml-100k" / "warm" / "Pop" / "seed-0"
    proto = Path(json.loads((cell_dir / "cell.json").read_text())["protocol"])
    value = recompute_from_scores(cell_dir / "scores.jsonl", proto / "test_candidates.jsonl",
                                  "NDCG@1")
    assert value == pytest.approx(cell.mean("NDCG@1"))
    assert f"{value:.4f}" in (out / "warm.md").read_text()


def test_rerun_uses_cache_and_force_recomputes(small_run):
    out, _ = small_run
    cell = out / "cells" / "ml-100k" / "warm" / "Random" / "seed-0" / "scores.jsonl"
    stamp = cell.stat().st_mtime_ns
    run_table("warm", "smoke", out, systems=["Random"], log=lambda s: None)
    assert cell.stat().st_mtime_ns == stamp
    before = cell.read_bytes()
    run_table("warm", "smoke", out, systems=["Random"], force=True, log=lambda s: None)
    assert cell.stat().st_mtime_ns != stamp
    assert cell.read_bytes() == before, "same inputs and seed give identical scores"


class _Exploding(System):
    name = "Exploding"
    profiles = {"smoke": {}, "cpu": {}, "paper": {}}
    closed: list[int] = []

    def fit(self, data, valid):
        pass

    def score(self, requests):
        raise RuntimeError("boom")

    def close(self):
        self.closed.append(self.seed)


class _Peeking(System):
    """Checks that no label reaches a system at scoring time."""

    name = "Peeking"
    profiles = {"smoke": {}, "cpu": {}, "paper": {}}

    def fit(self, data, valid):
        self.valid_users = {r.user for r in valid.requests}

    def score(self, requests):
        for r in requests:
            assert set(vars(r)) == {"user", "history", "candidates"}
        return np.zeros((len(requests), 30))


class _Abstaining(System):
    """Names a candidate for every other user and abstains (a NaN row) for the rest."""

    name = "Abstaining"
    profiles = {"smoke": {}, "cpu": {}, "paper": {}}

    def fit(self, data, valid):
        pass

    def score(self, requests):
        s = np.zeros((len(requests), 30))
        s[:, 0] = 1.0
        s[1::2] = np.nan
        return s


class _HalfNaN(_Abstaining):
    name = "HalfNaN"

    def score(self, requests):
        s = super().score(requests)
        s[0, 3] = np.nan
        return s


def test_abstentions_are_exported_as_null_and_count_as_misses(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.BUILTIN, "Abstaining", f"{__name__}:_Abstaining")
    res = run_table("warm", "smoke", tmp_path, systems=["Abstaining"], log=lambda s: None)
    cell_dir = tmp_path / "cells" / "ml-100k" / "warm" / "Abstaining" / "seed-0"
    rows = [json.loads(line) for line in (cell_dir / "scores.jsonl").read_text().splitlines()]
    assert [r["scores"] is None for r in rows] == [n % 2 == 1 for n in range(len(rows))]
    proto = Path(json.loads((cell_dir / "cell.json").read_text())["protocol"])
    for metric in ("NDCG@1", "NDCG@3", "MRR"):
        value = recompute_from_scores(cell_dir / "scores.jsonl",
                                      proto / "test_candidates.jsonl", metric)
        assert value == pytest.approx(res.results[0].mean(metric))
    hr3 = res.results[0].values["HR@3"]
    assert (hr3[1::2] == 0).all(), "an abstention is a miss"


def test_partly_non_finite_scores_are_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.BUILTIN, "HalfNaN", f"{__name__}:_HalfNaN")
    res = run_table("warm", "smoke", tmp_path, systems=["HalfNaN"], log=lambda s: None)
    assert not res.results and "non-finite" in res.failures[0].error


def test_crash_leaves_no_half_written_cell(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.BUILTIN, "Exploding", f"{__name__}:_Exploding")
    res = run_table("warm", "smoke", tmp_path, systems=["Exploding"], log=lambda s: None)
    assert res.failures[0].error == "RuntimeError: boom"
    assert _Exploding.closed == [0]  # what fit() loaded is freed even when scoring fails
    cell = tmp_path / "cells" / "ml-100k" / "warm" / "Exploding"
    assert not (cell / "seed-0").exists()
    assert not [p for p in cell.parent.rglob("*") if ".partial-" in p.name]


def test_requests_carry_no_label(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.BUILTIN, "Peeking", f"{__name__}:_Peeking")
    res = run_table("warm", "smoke", tmp_path, systems=["Peeking"], log=lambda s: None)
    assert res.results[0].mean("NDCG@1") == pytest.approx(1 / 30)  # constant scorer


def test_unknown_system_did_you_mean():
    with pytest.raises(registry.UnknownSystem, match="Did you mean 'SASRec'"):
        registry.resolve("SasRek")
    assert registry.resolve("sasrec").name == "SASRec"


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=600)


def test_cli_errors_are_clear(tmp_path):
    r = _cli("protocol", "build", "--dataset", "ml-10k", "--setting", "warm", "--out",
             str(tmp_path / "p"))
    assert r.returncode == 2 and "Did you mean 'ml-100k'" in r.stderr
    r = _cli("run", "--table", "warm", "--systems", "SASrek", "--out", str(tmp_path))
    assert r.returncode == 2 and "Did you mean" in r.stderr
    assert "examples:" in _cli("--help").stdout


def test_plugin_installs_lists_and_runs(tmp_path):
    """The README's plugin example: installed with pip, found through its entry point."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(target),
                    str(ROOT / "examples" / "plugin")], check=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)])}
    listed = _cli("list-systems", env=env)
    assert "ItemCoOccurrence" in listed.stdout and "plugin" in listed.stdout
    out = tmp_path / "run"
    r = _cli("run", "--table", "warm", "--profile", "smoke", "--systems",
             "Random,ItemCoOccurrence", "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ItemCoOccurrence" in (out / "warm.md").read_text()
    cell = load_cell(out / "cells" / "ml-100k" / "warm" / "ItemCoOccurrence" / "seed-0")
    assert cell.group == "Traditional" and len(cell.users) > 10
    # the plugin's own test: the contract check the README's guide asks for
    checked = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              str(ROOT / "examples" / "plugin" / "tests")], capture_output=True,
                             text=True, cwd=tmp_path, env=env, timeout=300)
    assert checked.returncode == 0, checked.stdout[-2000:]


def test_report_rebuilds_without_training(small_run, tmp_path):
    out, _ = small_run
    (out / "warm.md").unlink()
    r = _cli("report", "--out", str(out), "--table", "warm")
    assert r.returncode == 0, r.stderr
    assert "Pop" in (out / "warm.md").read_text()


def test_a_cell_starts_with_autograd_anomaly_detection_off():
    """Whatever an earlier cell of the process switched on (RecBole's SINE module turns on
    anomaly detection when imported), the next cell trains without it."""
    import torch

    from bench.cells import _prepare

    torch.autograd.set_detect_anomaly(True)
    try:
        _prepare(0)
        assert not torch.is_anomaly_enabled()
    finally:
        torch.autograd.set_detect_anomaly(False)
