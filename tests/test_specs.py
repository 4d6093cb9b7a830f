"""Settings and datasets are specs in registries (like systems): each spec is the one
place that knows its split or loader, its table and caption, its download entry; the
protocol defaults live in ProtocolOptions."""

from __future__ import annotations

import dataclasses
import json
from importlib.metadata import EntryPoint

import numpy as np
import pytest

from bench import profiles
from bench.cli import main
from protocols import datasets, registry, settings
from protocols.build import build_protocol
from protocols.datasets import DatasetSpec, RemoteFile
from protocols.errors import ProtocolError
from protocols.files import load_protocol
from protocols.interactions import Interactions
from protocols.options import ProtocolOptions
from reports.tables import build_table
from tests.conftest import write_atomic_dataset

FEWSHOT_50 = settings.fewshot(50)  # what a plugin adding a setting would export


def toy_loader(root, name: str) -> Interactions:
    """A dataset loader as a plugin would write one (here: RecBole atomic files)."""
    from protocols.atomic import load_atomic

    return load_atomic(root / "files", "toy")


def _toy_files(root):
    rng = np.random.default_rng(0)
    lines = [f"u{u}\ti{i}\t5\t{1000 + t}" for u in range(60)
             for t, i in enumerate(rng.choice(80, 10, replace=False))]
    return write_atomic_dataset(root / "files", lines, [f"i{i}\tTitle {i}" for i in range(80)])


def _plugins(monkeypatch, group, *pairs):
    eps = [EntryPoint(name, value, group) for name, value in pairs]
    monkeypatch.setattr(registry, "entry_points",
                        lambda group: [ep for ep in eps if ep.group == group])


def test_builtin_settings_make_the_tables_and_unknown_names_suggest():
    assert settings.tables() == {"warm": ("warm",), "cold": ("cold",),
                                 "fewshot": ("fewshot-10", "fewshot-20", "fewshot-30",
                                             "fewshot-cold-10", "fewshot-cold-20",
                                             "fewshot-cold-30")}
    assert settings.get("WARM").name == "warm"
    with pytest.raises(ProtocolError, match="Did you mean 'warm'"):
        settings.get("wram")
    with pytest.raises(ProtocolError, match="unknown setting 'lukewarm'"):
        build_protocol("ml-100k", "lukewarm", 0, "/nonexistent")


def test_a_setting_plugin_is_one_spec(monkeypatch, tmp_path):
    """A new setting: its spec, found through an entry point; the command line, the
    protocol build and the table caption follow without other edits."""
    _plugins(monkeypatch, settings.ENTRY_POINT_GROUP, ("fewshot-50", f"{__name__}:FEWSHOT_50"))
    assert settings.tables()["fewshot"][-1] == "fewshot-50"
    out = tmp_path / "p"
    assert main(["protocol", "build", "--dataset", "ml-100k", "--setting", "fewshot-50",
                 "--max-users", "60", "--out", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["setting"] == "fewshot-50"
    kept, total = m["counts"]["training_samples_kept"], m["counts"]["training_samples_total"]
    assert kept == int(np.ceil(0.5 * total))
    assert all(s.targets is not None for s in load_protocol(out).data.train)


def test_a_clashing_or_malformed_setting_plugin_is_refused(monkeypatch):
    _plugins(monkeypatch, settings.ENTRY_POINT_GROUP, ("Warm", f"{__name__}:FEWSHOT_50"),
             ("fewshot-5", f"{__name__}:FEWSHOT_50"))
    assert "clashes with the built-in 'warm'" in settings.SETTINGS.refused()["Warm"]
    with pytest.raises(registry.RegistryError, match="ambiguous"):
        settings.get("Warm")
    with pytest.raises(registry.RegistryError, match="SettingSpec named 'fewshot-5'"):
        settings.get("fewshot-5")  # the spec is named fewshot-50


def test_a_dataset_is_one_spec(monkeypatch, tmp_path):
    """A new dataset: its spec names the loader (imported on use) and where files live."""
    monkeypatch.setenv("MOLOREC_BENCH_DATA", str(tmp_path / "data"))
    _toy_files(tmp_path / "data" / "toy-set")
    monkeypatch.setitem(datasets.BUILTIN, "toy-set",
                        DatasetSpec("toy-set", f"{__name__}:toy_loader",
                                    (RemoteFile("https://example.org/toy.zip", extract=True),)))
    m = build_protocol("toy-set", "warm", 0, tmp_path / "p", kcore=2)
    assert m["dataset"] == "toy-set" and m["counts"]["test_users"] > 0
    assert set(m["source"]) == {"toy.inter", "toy.item"}
    assert datasets.download_source("toy-set").files[0].filename == "toy.zip"
    with pytest.raises(ProtocolError, match="Did you mean 'toy-set'"):
        build_protocol("toy-sat", "warm", 0, tmp_path / "q")


def test_dataset_families_and_the_embedded_default():
    spec, name = datasets.lookup("amazon2018-Books")
    assert spec.family and name == "amazon2018-Books" and spec.part(name) == "Books"
    assert datasets.download_source("amazon2018-Books") is None  # no download entry
    assert datasets.lookup("ml-100k")[0].directory("ml-100k").name == "ml-100k"
    assert datasets.lookup("AMAZON2014-beauty", fold_case=True)[1] == "amazon2014-Beauty"
    assert "amazon2014-<Category>" in datasets.known()


def test_protocol_defaults_live_in_one_place(tmp_path, capsys):
    d = ProtocolOptions()
    with pytest.raises(SystemExit):
        main(["protocol", "build", "--help"])
    assert f"k-core filter (default {d.kcore})" in capsys.readouterr().out
    assert profiles.get("cpu").protocol == d
    assert profiles.get("smoke").protocol == dataclasses.replace(d, max_users=80,
                                                                 cold_fraction=0.2)
    m = build_protocol("ml-100k", "warm", 0, tmp_path / "p", max_users=40)
    assert m["options"] == {**d.as_dict(), "max_users": 40}


def test_captions_and_columns_come_from_the_setting_specs():
    from bench.results import CellResult

    users = [f"u{i}" for i in range(5)]

    def cell(setting, dataset="ml-1m"):
        v = {"NDCG@1": np.linspace(0, 1, 5), "NDCG@3": np.linspace(0, 1, 5)}
        return CellResult("t", dataset, setting, "SASRec", "Traditional", 0, "a" * 64, users, v,
                          n_candidates=101)

    t = build_table([cell("cold")])
    assert t.caption.startswith(f"Table t: {settings.COLD.title}. {settings.COLD.protocol}")
    assert "1 positive + 100 sampled negatives (101 candidates)" in t.caption
    assert t.paper_table == "table2"
    few = build_table([cell("fewshot-20")], metrics=["NDCG@1"])
    assert few.column_label(0) == "ml-1m 20% NDCG@1"
