"""`bench compare`: every row's paired t-test against one row, on matched users."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from bench.results import CellResult
from protocols.errors import OutputError
from reports.compare import compare, timings, to_markdown


def cell(system: str, users: list[str], ndcg: list[float], setting: str = "warm") -> CellResult:
    return CellResult("warm", "ml-100k", setting, system, "g", 0, "a" * 64, users,
                      {"NDCG@1": np.array(ndcg, dtype=float)})


def test_p_values_pair_users_by_id_not_by_position():
    users = [f"u{i}" for i in range(8)]
    ref = cell("MoLoRec", users, [1, 0, 1, 1, 0, 1, 1, 0])
    other_vals = [0, 0, 1, 0, 0, 1, 0, 0]
    # the same users in reverse order: pairing by position would compare the wrong users
    other = cell("SASRec", users[::-1], other_vals[::-1])
    rows = compare([ref, other], "molorec", ["NDCG@1"])
    by = {r["system"]: r for r in rows}
    assert by["MoLoRec"]["p NDCG@1"] is None
    expected = stats.ttest_rel(other_vals, [1, 0, 1, 1, 0, 1, 1, 0]).pvalue
    assert by["SASRec"]["p NDCG@1"] == pytest.approx(expected)
    assert by["SASRec"]["NDCG@1"] == pytest.approx(2 / 8)
    md = to_markdown(rows, "MoLoRec", ["NDCG@1"])
    assert "| SASRec | 0.2500 |" in md and "p vs MoLoRec" in md


def test_rows_of_other_settings_are_left_out_and_unknown_reference_is_named():
    users = ["a", "b", "c"]
    rows = compare([cell("MoLoRec", users, [1, 0, 0]), cell("Pop", users, [0, 0, 1], "cold")],
                   "MoLoRec", ["NDCG@1"])
    assert [r["system"] for r in rows] == ["MoLoRec"]
    with pytest.raises(OutputError, match="TALLRec.*rows: MoLoRec"):
        compare([cell("MoLoRec", users, [1, 0, 0])], "TALLRec", ["NDCG@1"])


def test_a_user_the_reference_did_not_score_is_refused():
    with pytest.raises(OutputError, match="not the same candidate file"):
        compare([cell("MoLoRec", ["a", "b"], [1, 0]), cell("Pop", ["a", "z"], [0, 1])],
                "MoLoRec", ["NDCG@1"])


def test_timings_are_read_from_each_cell_directory(tmp_path):
    d = tmp_path / "cells" / "ml-100k" / "warm" / "Pop" / "seed-0"
    d.mkdir(parents=True)
    (d / "cell.json").write_text(json.dumps({"table": "warm", "dataset": "ml-100k",
                                             "setting": "warm", "system": "Pop", "seed": 0}))
    (d / "timing.json").write_text(json.dumps({"fit_seconds": 1.5, "score_seconds": 2.0}))
    t = timings(tmp_path)
    rows = compare([cell("Pop", ["a", "b"], [1, 0])], "Pop", ["NDCG@1"], t)
    assert (rows[0]["fit_seconds"], rows[0]["score_seconds"]) == (1.5, 2.0)
