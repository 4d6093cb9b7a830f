"""System names: one canonical name per system whatever the case, row labels work as
names, duplicates and clashing or invalid plugins are refused before any cell is run."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import numpy as np
import pytest

from bench import registry
from bench.api import System
from bench.cli import main
from bench.runner import run_table
from protocols.errors import OptionError
from reports.publish import rebuild

QUIET = {"log": lambda s: None}


class _BadGroup(System):
    name = "BadGroup"
    group = "Baseline"  # not one of bench.api.GROUPS

    def fit(self, data, valid):
        pass

    def score(self, requests):
        return np.zeros((len(requests), 30))


class _Impostor(_BadGroup):
    name = "SASRec"
    group = "Traditional"


def _plugins(monkeypatch, *pairs):
    eps = [EntryPoint(name, value, registry.ENTRY_POINT_GROUP) for name, value in pairs]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps)


def test_case_insensitive_names_share_one_cell(tmp_path):
    out = tmp_path / "out"
    run_table("warm", "smoke", out, systems=["random", "POP"], **QUIET)
    run_table("warm", "smoke", out, systems=["Random"], **QUIET)
    assert sorted(p.name for p in (out / "cells" / "ml-100k" / "warm").iterdir()) == [
        "Pop", "Random"]
    assert "Random" in rebuild(out, "warm", log=lambda s: None)[0]["md"].read_text()


@pytest.mark.parametrize("systems", [["Random", "Random"], ["Random", "random"]])
def test_duplicate_systems_are_refused(tmp_path, systems):
    with pytest.raises(OptionError, match="'?Random'? (more than once|twice)"):
        run_table("warm", "smoke", tmp_path / "out", systems=systems, **QUIET)
    assert not (tmp_path / "out").exists()


def test_row_label_is_a_name_and_suggestions_cover_close_names():
    assert registry.canonical("TinyQwen2", "smoke") == "Backbone"
    assert registry.canonical("tinyqwen2") == "Backbone"
    for typo, want in (("gru4rek", "GRU4Rec"), ("bprmf", "BPR-MF"), ("SasRek", "SASRec"),
                       ("TinyQwen", "TinyQwen2")):
        with pytest.raises(registry.UnknownSystem, match=f"Did you mean '{want}"):
            registry.canonical(typo, "smoke")


def test_plugin_clashing_with_a_builtin_is_refused(monkeypatch, capsys):
    _plugins(monkeypatch, ("sasrec", f"{__name__}:_Impostor"))
    assert "sasrec" in registry.refused() and "sasrec" not in registry.available()
    with pytest.raises(registry.RegistryError, match="clashes with the built-in 'SASRec'"):
        registry.resolve("SASRec")
    assert main(["list-systems"]) == 0
    assert "refused: plugin 'sasrec'" in capsys.readouterr().err


def test_plugin_whose_rows_take_a_builtin_name_is_refused(monkeypatch):
    _plugins(monkeypatch, ("MySASRec", f"{__name__}:_Impostor"))
    with pytest.raises(registry.RegistryError, match="which is the system 'SASRec'"):
        registry.resolve("MySASRec")


def test_plugin_with_an_unknown_group_writes_nothing(monkeypatch, tmp_path, capsys):
    _plugins(monkeypatch, ("BadGroup", f"{__name__}:_BadGroup"))
    out = tmp_path / "out"
    assert main(["run", "--table", "warm", "--profile", "smoke", "--systems",
                 "Random,BadGroup", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "group 'Baseline'" in err and "Reference" in err and "Traceback" not in err
    assert not out.exists()


def test_report_survives_a_second_cell_from_an_older_version(tmp_path, capsys):
    """Older versions stored `--systems random` as a second cell beside Random's."""
    import shutil

    out = tmp_path / "out"
    run_table("warm", "smoke", out, systems=["Random"], **QUIET)
    warm = out / "cells" / "ml-100k" / "warm"
    shutil.copytree(warm / "Random", warm / "random")
    assert main(["report", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"ignoring {warm / 'random' / 'seed-0'}" in err
    assert (out / "warm.md").read_text().count("| Random |") == 1
