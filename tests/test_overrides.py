"""`--set SYSTEM.PATH=VALUE`: validated against the system's profile config, part of the
cell key, recorded in cell.json and stated in the table caption."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import overrides as O
from bench import registry
from bench.api import System
from bench.runner import Variant
from molorec.profiles import PROFILES
from protocols.errors import OptionError
from reports.publish import publish_table

ROOT = Path(__file__).resolve().parents[1]


class _Tunable(System):
    """Scores that depend on its settings."""

    name = "Tunable"
    group = "Traditional"
    profiles = {"smoke": {"scale": 1.0, "train": {"epochs": 2, "lr": [1e-3, 2e-3]},
                          "flag": True, "note": "a"}}

    def fit(self, data, valid):
        pass

    def score(self, requests):
        rows = [[(hash(c) % 97) * self.config["scale"] + self.config["train"]["epochs"]
                 for c in r.candidates] for r in requests]
        return np.array(rows, dtype=float)


@pytest.fixture()
def tunable(monkeypatch):
    monkeypatch.setitem(registry.BUILTIN, "Tunable", f"{__name__}:_Tunable")


def _cell(out: Path, system: str) -> dict:
    return json.loads(next((out / "cells").rglob(f"{system}/seed-0/cell.json")).read_text())


def test_values_are_json_else_strings_and_never_evaluated():
    assert O.parse("MoLoRec.specific.train.epochs=1").value == 1
    assert O.parse("X.a.b=[1e-4, 2e-4]").value == [1e-4, 2e-4]
    assert O.parse("X.a=null").value is None and O.parse("X.a=false").value is False
    assert O.parse('X.a="1"').value == "1"
    assert O.parse("X.a=__import__('os').getcwd()").value == "__import__('os').getcwd()"
    assert O.parse("*.prompt.max_history=20").system == "*"
    for bad in ("MoLoRec=1", "epochs=1", "MoLoRec.specific", ".a=1", "X..a=1"):
        with pytest.raises(OptionError, match="expected SYSTEM.PATH=VALUE"):
            O.parse(bad)
    with pytest.raises(OptionError, match="one by one"):
        O.parse('X.a={"b": 1}')


def test_set_changes_the_key_the_cell_and_the_caption(tunable, tmp_path):
    out = tmp_path / "out"
    plain = publish_table("warm", "smoke", out, systems=["Random", "Tunable"],
                          log=lambda s: None)
    before = {n: _cell(out, n) for n in ("Random", "Tunable")}
    assert "overrides" not in before["Tunable"] and "--set" not in plain.markdown
    res = publish_table("warm", "smoke", out, systems=["Random", "Tunable"],
                        variant=Variant(overrides=("tunable.train.epochs=5",
                                                   "*.scale=0.5")),
                        log=lambda s: None)
    after = {n: _cell(out, n) for n in ("Random", "Tunable")}
    assert after["Random"]["key"] == before["Random"]["key"]  # Random has no such setting
    assert after["Tunable"]["key"] != before["Tunable"]["key"]
    assert after["Tunable"]["overrides"] == {"train.epochs": 5, "scale": 0.5}
    assert after["Tunable"]["config"]["train"] == {"epochs": 5, "lr": [1e-3, 2e-3]}
    assert "Settings changed from the profile (--set): Tunable scale=0.5; Tunable " \
           "train.epochs=5." in res.markdown
    assert after["Tunable"]["scores_sha256"] != before["Tunable"]["scores_sha256"]


def test_unknown_settings_are_errors_with_the_closest_names(tunable, tmp_path):
    out = tmp_path / "never"
    cases = {"Tunable.train.epoch=1": "Tunable \\(profile smoke\\) has no setting "
                                      "'train.epoch'; did you mean 'train.epochs'",
             "*.traim.lr=1": "no system has a setting 'traim.lr'; did you mean 'train.lr'",
             "Tunable.train.epochs=one": "is a number",
             "Tunable.train.lr=[1, \"x\"]": "is a number",
             "Tunable.flag=1": "true or false",
             "Tunable.train=3": "is a section; set one of its settings \\(train.epochs",
             "Tunabel.scale=1": "Did you mean 'Tunable'"}
    for text, message in cases.items():
        with pytest.raises((OptionError, registry.UnknownSystem), match=message):
            publish_table("warm", "smoke", out, systems=["Tunable"],
                          variant=Variant(overrides=(text,)), log=lambda s: None)
    assert not out.exists()  # checked before anything is written


def test_set_reaches_every_llm_system_of_the_paper_profile():
    configs = {n: dict(PROFILES[k]["paper"]) for n, k in (
        ("TALLRec", "tallrec"), ("MoLoRec", "molorec"), ("RecLoRA", "reclora"))}
    configs["SASRec"] = registry.resolve("SASRec").config_for("paper")
    new, applied = O.apply(["*.prompt.max_history=5", "MoLoRec.specific.train.epochs=1",
                            "SASRec.epochs=3"], configs, "paper")
    assert {n: c["prompt"]["max_history"] for n, c in new.items() if n != "SASRec"} == {
        "TALLRec": 5, "MoLoRec": 5, "RecLoRA": 5}
    assert new["MoLoRec"]["specific"]["train"]["epochs"] == 1
    assert new["SASRec"]["epochs"] == 3 and "prompt" not in new["SASRec"]
    assert applied["MoLoRec"] == {"prompt.max_history": 5, "specific.train.epochs": 1}
    assert PROFILES["molorec"]["paper"]["specific"]["train"]["epochs"] == 4  # not touched
    logged = []
    O.apply(["P5.epochs=1"], configs, "paper", log=logged.append)
    assert logged and "not a system of this run" in logged[0]


def test_cli_set_error_is_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bench", "run", "--table", "warm", "--profile",
                        "smoke", "--systems", "MoLoRec", "--out", str(tmp_path / "o"),
                        "--set", "MoLoRec.specific.train.epoch=1"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "did you mean 'specific.train.epochs'" in r.stderr
    assert not (tmp_path / "o").exists()


def test_a_star_setting_of_systems_outside_the_run_is_ignored_with_a_note():
    """One `--set` list for several tables: `*.epochs` names SASRec's setting, so a run of
    Random and Pop alone notes it and goes on; a setting no system has is an error."""
    said = []
    configs = {n: registry.resolve(n, "smoke").config_for("smoke") for n in ("Random", "Pop")}
    new, applied = O.apply(["*.epochs=1"], configs, "smoke", log=said.append)
    assert new == configs and applied == {"Random": {}, "Pop": {}}
    assert said == ["--set *.epochs=1: no system of this run has epochs; ignored"]
    with pytest.raises(OptionError, match="no system has a setting 'epochz'"):
        O.apply(["*.epochz=1"], configs, "smoke", log=said.append)
