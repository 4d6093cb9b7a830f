"""`bench figures` (Figures 4 and 5) and `bench explain` (the case study, Figure 6).

The fast tests draw from hand-made cells; the slow one runs the smoke profile's MoLoRec
rows on warm and cold, then both commands on the stored run."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from bench import cli
from bench.results import CellResult
from molorec.analysis import count_selected
from molorec.explain import CaseStudy, positive_rank, to_markdown
from reports import figures as F

USERS = [f"u{i}" for i in range(5)]


def cell(setting, blocks, seed=0, system="MoLoRec"):
    info = {"adapters_order": ["general", "specific"], "weights_by_block": blocks,
            "mixture_method": "entropy"}
    v = np.full(len(USERS), 0.1)
    return CellResult("warm", "ml-100k", setting, system, "Ours", seed, "a" * 64,
                      list(USERS), {"NDCG@1": v}, {"describe": info})


def blocks(g, n=4):
    return {f"layer {i}": [round(g + 0.01 * i, 4), round(1 - g - 0.01 * i, 4)]
            for i in range(n)}


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_figure4_reads_weights_from_cells_and_writes_png_svg_csv(tmp_path):
    cells = [cell("warm", blocks(0.3)), cell("warm", blocks(0.5), seed=1),
             cell("cold", blocks(0.7)),
             cell("cold", {}, system="MoLoRec-S"),  # no mixture: not drawn
             cell("fewshot-10", blocks(0.1))]  # not asked for
    rows = F.mixture_rows(cells, ("warm", "cold"))
    assert {r["setting"] for r in rows} == {"warm", "cold"}
    assert len(rows) == 3 * 4 * 2  # cells x blocks x adapters
    paths = F.plot_mixture(rows, tmp_path)
    assert set(paths) == {"png", "svg", "csv"}
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = paths["svg"].read_text()
    assert "<svg" in svg and "Warm-start" in svg and "Cold-start" in svg
    table = read_csv(paths["csv"])
    assert list(table[0]) == list(F.MIXTURE_FIELDS)
    first = [r for r in table if (r["setting"], r["seed"], r["block"]) == ("warm", "0",
                                                                          "layer 1")]
    assert {r["module"]: float(r["weight"]) for r in first} == {"general": 0.31,
                                                                 "specific": 0.69}
    # the same rows draw the same files (no dates inside)
    again = F.plot_mixture(rows, tmp_path / "again")
    assert again["svg"].read_bytes() == paths["svg"].read_bytes()
    assert again["csv"].read_bytes() == paths["csv"].read_bytes()
    with pytest.raises(ValueError, match="MoLoRec"):
        F.plot_mixture([], tmp_path)


def test_figure4_blocks_in_layer_order_not_string_order():
    stored = dict(sorted(blocks(0.3, n=12).items()))  # as cell.json stores them
    rows = F.mixture_rows([cell("warm", stored)], ("warm",))
    order = list(dict.fromkeys(r["block"] for r in rows))
    assert order == [f"layer {i}" for i in range(12)]


def test_figure5_draws_points_and_reference_lines(tmp_path):
    rows = [{"dataset": "ml-100k", "setting": s, "seed": 0, "n_prompts": n,
             "ndcg@1": 0.05 + 0.001 * n, "entropy_lr": 0.1, "table_n_prompts": 32,
             "table_n_prompts_selected": False}
            for s in ("warm", "cold") for n in (10, 25, 32, 50)]
    refs = [{"dataset": "ml-100k", "setting": "warm", "system": "MoLoRec-S", "value": 0.08}]
    paths = F.plot_prompt_counts(rows, tmp_path, refs)
    assert paths["png"].stat().st_size > 1000
    svg = paths["svg"].read_text()
    assert "MoLoRec-S" in svg
    # the ringed count says how the table got it: fixed here, chosen on validation below
    assert "fixed by the profile" in svg and "chosen on validation" not in svg
    table = read_csv(paths["csv"])
    assert len(table) == 8 and list(table[0]) == list(F.PROMPT_FIELDS)
    chosen = [{**r, "table_n_prompts_selected": True} for r in rows]
    svg = F.plot_prompt_counts(chosen, tmp_path / "chosen")["svg"].read_text()
    assert "chosen on validation" in svg and "fixed by the profile" not in svg


def test_figure5_says_whether_the_count_was_selected():
    cell = {"config": {"mixture": {"entropy": {"n_prompts": 32}}}}
    assert not count_selected(cell)
    cell["config"]["mixture"]["entropy"]["n_prompts"] = [50, 100]
    assert count_selected(cell)


def test_positive_rank_follows_the_tie_rule():
    assert positive_rank([0.1, 0.9, 0.5], 2) == (2, 2)
    assert positive_rank([0.5, 0.9, 0.5, 0.5], 0) == (2, 4)
    assert positive_rank(None, 0) is None


def test_case_study_markdown_marks_positive_and_recommendation():
    cs = CaseStudy("ml-100k", "warm", 0, "42", ["A | b", "C_d"], 1, ["X", "Y*", "Z"], 1,
                   "Y*", 1, "Because it is like C_d.\n\n\nIt fits.", (1, 1), "TinyQwen2",
                   "mixture weights as learned")
    md = to_markdown(cs)
    assert "# Case study: user 42, ml-100k (warm), seed 0" in md
    assert "1. A \\| b" in md and "2. C\\_d" in md  # escaped for Markdown
    assert "2. Y\\* **(positive, recommended)**" in md
    assert "candidate 2: Y\\* (the positive)" in md
    assert "rank 1 of 3" in md and "the prompt kept the last 1" in md
    assert "> Because it is like C\\_d.\n>\n> It fits.\n" in md  # every line quoted
    miss = to_markdown(CaseStudy(**{**cs.__dict__, "chosen": None, "rank": None,
                                    "answer": ""}))
    assert "names no candidate" in miss and "abstained" in miss and "> (empty)" in miss


def test_commands_refuse_without_a_run(tmp_path, capsys):
    assert cli.main(["figures", "--out", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["explain", "--out", str(tmp_path / "empty"), "--user", "1"]) == 2
    assert "no stored cells" in capsys.readouterr().err
    assert cli.main(["figures", "--out", str(tmp_path / "empty"), "--figures", "6"]) == 2
    assert "no figure 6" in capsys.readouterr().err


@pytest.mark.slow
def test_smoke_run_then_figures_and_explain(tmp_path_factory, capsys):
    from reports.publish import publish_table

    out = tmp_path_factory.getbasetemp() / "e2e"  # shared with test_end_to_end's cells
    rows = ["MoLoRec-G", "MoLoRec-S", "MoLoRec"]
    runs = {t: publish_table(t, "smoke", out, systems=rows, log=lambda s: None)
            for t in ("warm", "cold")}
    mine = {t: next(c for c in r.results if c.system == "MoLoRec") for t, r in runs.items()}

    assert cli.main(["figures", "--out", str(out), "--prompts", "5,10"]) == 0
    fig = out / "figures"
    for stem in ("figure4-mixture-weights", "figure5-unlabeled-prompts"):
        assert {p.suffix for p in fig.glob(f"{stem}.*")} == {".png", ".svg", ".csv"}
    weights = read_csv(fig / "figure4-mixture-weights.csv")
    assert {r["setting"] for r in weights} == {"warm", "cold"}
    points = read_csv(fig / "figure5-unlabeled-prompts.csv")
    for t, c in mine.items():
        own = int(c.meta["describe"]["entropy_n_prompts"])
        curve = {int(r["n_prompts"]): float(r["ndcg@1"]) for r in points if r["setting"] == t}
        assert set(curve) == {5, 10, own}
        # the point at the table's own count reproduces the table's value
        assert curve[own] == pytest.approx(c.mean("NDCG@1"), abs=1e-6)
    # points are cached: a second call trains and scores nothing new
    before = sorted(p.stat().st_mtime_ns for p in (out / "cache" / "analysis").rglob("*.json"))
    assert cli.main(["figures", "--out", str(out), "--figures", "5", "--prompts", "5,10"]) == 0
    after = sorted(p.stat().st_mtime_ns for p in (out / "cache" / "analysis").rglob("*.json"))
    assert before == after
    capsys.readouterr()

    user = mine["warm"].users[0]
    assert cli.main(["explain", "--out", str(out), "--user", user]) == 0
    printed = capsys.readouterr().out
    md = next((out / "explain").glob(f"*warm*user-{user}.md")).read_text()
    assert md in printed
    assert f"# Case study: user {user}, ml-100k (warm), seed 0" in md
    assert md.count("**(positive") == 1
    stored = json.loads((out / "cells" / "ml-100k" / "warm" / "MoLoRec" / "seed-0"
                         / "scores.jsonl").read_text().splitlines()[0])
    cands = stored["candidates"]
    pos = cands.index(next(r for r in _test_rows(out, "warm") if r["user"] == user)["positive"])
    best, worst = positive_rank(stored["scores"], pos)
    assert (f"rank {best} of 30" if best == worst else f"ranks {best}-{worst} of 30") in md
    assert cli.main(["explain", "--out", str(out), "--user", "no-such-user"]) == 2
    assert "not a test user" in capsys.readouterr().err


def _test_rows(out, setting):
    path = next((out / "protocols" / "ml-100k" / setting).glob("seed-*/test_candidates.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines()]
