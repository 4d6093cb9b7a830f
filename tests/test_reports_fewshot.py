"""The few-shot table in the paper's Table 3 layout: settings as rows, systems as columns,
the same marks, rates beside their system, the published Table 3 beside ours."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from bench.results import CellResult
from reports.tables import build_table, render_all

N = 60
USERS = [f"u{i:02d}" for i in range(N)]
WARM, COLD = "a" * 64, "b" * 64
SETTINGS = [f"fewshot-{p}" for p in (10, 20, 30)] + [f"fewshot-cold-{p}" for p in (10, 20, 30)]


def split(line: str) -> list[str]:
    return [c.strip() for c in line.split("|")[1:-1]]


def cell(system, group, setting, values, rates=None, seed=0):
    v = np.asarray(values, dtype=np.float64)
    meta = {"describe": {"rates": rates}} if rates else {}
    return CellResult("fewshot", "ml-100k", setting, system, group, seed,
                      COLD if "cold" in setting else WARM, list(USERS),
                      {"NDCG@1": v, "NDCG@3": v}, meta)


def results(seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for s in SETTINGS:
        base = rng.uniform(0, 0.5, N)
        out += [cell("TALLRec", "LLM-Based", s, base, seed=seed),
                cell("2nd Finetune", "LLM-Based", s, base * 0.2,
                     rates={"invalid (generate)": 0.35 + 0.1 * seed}, seed=seed),
                cell("MoLoRec", "Ours", s, base + rng.uniform(0.2, 0.4, N), seed=seed)]
    return out


def test_rows_are_scenario_by_share_and_columns_systems():
    t = build_table(results(), order=["TALLRec", "2nd Finetune", "MoLoRec"])
    assert t.layout == "settings"
    assert [c.metric for c in t.columns] == ["NDCG@1"] * 6  # the settings' metric
    md = t.to_markdown().splitlines()
    assert md[0] == ("| Scenario | Sample % | TALLRec | 2nd Finetune | "
                     "2nd Finetune invalid (generate) | MoLoRec |")
    body = md[2:8]
    assert [r.split(" | ")[0:2] for r in body] == [
        ["| Warm-Start", "10%"], ["| ", "20%"], ["| ", "30%"],
        ["| Cold-Start", "10%"], ["| ", "20%"], ["| ", "30%"]]
    # every row: MoLoRec best and significant (Holm over the six rows), TALLRec second
    assert len(t.comparisons) == 6 and all(c.significant for c in t.comparisons)
    for line in body:
        cells = split(line)
        assert cells[2].startswith("<u>") and cells[5].startswith("**")
        assert cells[5].endswith("\\*") and cells[4] == "35.0%"
    assert "in each row among the compared systems" in t.caption
    # warm and cold few-shot rank two candidate files: each named once, with its settings
    assert "ml-100k (fewshot-10, fewshot-20, fewshot-30) aaaaaaaaaaaa" in t.caption
    assert "(fewshot-cold-10, fewshot-cold-20, fewshot-cold-30) bbbbbbbbbbbb" in t.caption


def test_values_match_the_per_user_means_and_rates_average_over_seeds():
    res = results(0) + results(1)
    t = build_table(res)
    by = {(c.setting, c.system, c.seed): c for c in res}
    j = next(j for j, c in enumerate(t.columns) if c.setting == "fewshot-cold-20")
    mol = next(r for r in t.rows if r.system == "MoLoRec")
    want = np.mean([by[("fewshot-cold-20", "MoLoRec", s)].mean("NDCG@1") for s in (0, 1)])
    assert mol.cells[j].mean == pytest.approx(want)
    assert f"{want:.4f}" in t.to_markdown()
    assert t.rates[("2nd Finetune", "ml-100k", "fewshot-10")] == {
        "invalid (generate)": pytest.approx(0.40)}
    d = t.to_dict()
    assert d["layout"] == "settings" and json.dumps(d)
    assert {"system": "2nd Finetune", "dataset": "ml-100k", "setting": "fewshot-10",
            "rates": {"invalid (generate)": pytest.approx(0.40)}} in d["rates"]


def test_reference_paper_prints_table3_beside_ours_and_latex_blocks(tmp_path):
    paths = render_all(results(), tmp_path, "fewshot", reference="paper")
    md = paths["md"].read_text()
    assert "**Published (paper, Table 3)**" in md
    assert "| Cold-Start | 10% | 0.1091 | 0.0000 | 0.1455 |" in md
    tex = paths["tex"].read_text()
    ours = tex.split(r"\par\medskip")[0]
    assert ours.count(r"\midrule") == 2  # one block per scenario
    assert r"Warm-Start & 10\% &" in ours and r"35.0\%" in ours
    assert r"\textbf{" in ours and "$^{*}$" in ours
    if shutil.which("pdflatex"):
        subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error",
                        paths["tex_document"].name], cwd=tmp_path, check=True,
                       capture_output=True, timeout=120)


def test_several_datasets_get_a_dataset_column_and_failed_systems_say_so():
    res = results()
    res += [CellResult("fewshot", "ml-1m", c.setting, c.system, c.group, 0,
                       c.candidates_sha256.replace("a", "c").replace("b", "d"), c.users,
                       c.values, c.meta) for c in results()]
    t = build_table(res, failed={"RecLoRA": "LLM-Based"})
    md = t.to_markdown().splitlines()
    assert md[0].startswith("| Dataset | Scenario | Sample % |")
    # the paper's datasets first (reports.paper_reference.DATASET_ORDER)
    assert md[2].startswith("| ml-1m | Warm-Start | 10% |")
    assert md[3].startswith("|  |  | 20% |")
    assert md[5].startswith("| ml-1m | Cold-Start | 10% |")
    assert md[8].startswith("| ml-100k | Warm-Start | 10% |")
    col = split(md[0]).index("RecLoRA")
    assert all(split(line)[col] == "failed" for line in md[2:14])
