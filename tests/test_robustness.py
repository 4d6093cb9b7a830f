"""The robustness report (`bench robustness`): Kendall's tau and the significance
decisions on a constructed example whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from bench.results import CellResult
from protocols.errors import OutputError
from reports.robustness import analyse, kendall_tau, plot_ranks, ranks, to_latex, to_markdown

USERS = [f"u{i}" for i in range(40)]


def _cell(table: str, system: str, values: np.ndarray, negatives) -> CellResult:
    v = np.clip(values, 0, 1)
    return CellResult(table, "toy", "warm", system, "Traditional", 0, f"sha-{table}", USERS,
                      {"NDCG@1": v, "NDCG@3": v}, {}, None, negatives)


def _example() -> list[CellResult]:
    """At 1+29: A > B > C > D, every gap large and consistent (all significant). At 1+99:
    A > C > B > D; C is A plus symmetric noise (no significant difference), B and D stay
    far below A."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.5, len(USERS))
    noise = rng.normal(0, 0.05, len(USERS))
    noise -= noise.mean() + 0.008  # C's mean 0.008 under A's (t about 1)
    return [
        _cell("warm", "A", base + 0.4, 29), _cell("warm", "B", base + 0.2, 29),
        _cell("warm", "C", base + 0.1, 29), _cell("warm", "D", base - 0.2, 29),
        _cell("warm-n99", "A", base + 0.3, 99), _cell("warm-n99", "B", base - 0.1, 99),
        _cell("warm-n99", "C", base + 0.3 + noise, 99), _cell("warm-n99", "D", base - 0.25, 99),
    ]


def test_kendall_tau_matches_scipy_with_ties():
    rng = np.random.default_rng(1)
    for _ in range(20):
        a, b = rng.integers(0, 4, 9).astype(float), rng.integers(0, 4, 9).astype(float)
        want = stats.kendalltau(a, b).statistic
        got = kendall_tau(a, b)
        assert (np.isnan(want) and np.isnan(got)) or got == pytest.approx(want)
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert ranks({"a": 0.5, "b": 0.7, "c": 0.5}) == {"b": 1, "a": 2, "c": 2}


def test_robustness_on_a_constructed_example(tmp_path):
    r = analyse(_example(), "warm", against="A")
    assert r["counts"] == ["1+29", "1+99"] and r["base"] == "1+29"
    (block,) = r["blocks"]
    rank = {row["system"]: {c: row["values"][c]["rank"] for c in r["counts"]}
            for row in block["rows"]}
    assert rank == {"A": {"1+29": 1, "1+99": 1}, "B": {"1+29": 2, "1+99": 3},
                    "C": {"1+29": 3, "1+99": 2}, "D": {"1+29": 4, "1+99": 4}}
    # one discordant pair (B, C) of six
    assert block["kendall_tau"]["NDCG@1 1+99"]["tau"] == pytest.approx(4 / 6)
    assert block["kendall_tau"]["NDCG@1 1+99"]["rows"] == 4
    best = {(x["metric"], x["count"]): x for x in block["best_vs_runner_up"]}
    at29, at99 = best[("NDCG@1", 29)], best[("NDCG@1", 99)]
    assert (at29["best"], at29["runner_up"], at29["significant"]) == ("A", "B", True)
    assert (at99["best"], at99["runner_up"], at99["significant"]) == ("A", "C", False)
    assert at29["same"] is None and at99["same"] is False
    vs = {(x["metric"], x["row"]): x for x in r["versus"]}
    assert vs[("NDCG@1", "B")]["same"] and vs[("NDCG@1", "D")]["same"]
    b99 = vs[("NDCG@1", "B")]["at"]["1+99"]
    assert (b99["winner"], b99["significant"]) == ("A", True)
    c = vs[("NDCG@1", "C")]
    assert c["at"]["1+29"]["winner"] == "A" and c["at"]["1+29"]["significant"]
    assert not c["at"]["1+99"]["significant"] and c["same"] is False
    # Holm over the count's six row-vs-A tests (3 rows x 2 metrics): B's and D's p are 0
    # (constant differences), so C's two equal p-values (NDCG@1 = NDCG@3 here) are the
    # 5th and 6th smallest and both get 2 x p
    raw = stats.ttest_rel(_example()[6].values["NDCG@1"], _example()[4].values["NDCG@1"]).pvalue
    assert 0.025 < raw < 0.5
    assert c["at"]["1+99"]["p_holm"] == pytest.approx(2 * raw)
    md, tex = to_markdown(r), to_latex(r)
    assert "| C | A *(p" in md and "| **no** |" in md
    # a row run at the default count only is compared once: neither "same" nor "changed"
    only29 = _cell("warm", "E", _example()[0].values["NDCG@1"] - 0.3, 29)
    e = {(x["metric"], x["row"]): x for x in analyse([*_example(), only29], "warm",
                                                     against="A")["versus"]}
    assert e[("NDCG@1", "E")]["at"]["1+99"] is None and e[("NDCG@1", "E")]["same"] is None
    assert e[("NDCG@1", "B")]["same"] is True
    assert "Kendall's tau-b against the 1+29 ordering: NDCG@1 1+99: 0.667" in md
    assert "\\begin{tabular}" in tex and "0.667" in tex
    paths = plot_ranks(r, tmp_path, "warm-robustness")
    assert paths["png"].stat().st_size > 1000
    assert "A,1+99,1" in paths["csv"].read_text().replace("toy,warm,", "")


def test_robustness_needs_two_counts():
    with pytest.raises(OutputError, match="--negatives"):
        analyse([c for c in _example() if c.table == "warm"], "warm")
