"""End to end on the smoke profile: every default system, warm and cold tables."""

from __future__ import annotations

import pytest

from bench import profiles, registry
from reports.publish import publish_table


@pytest.mark.slow
@pytest.mark.parametrize("table", ["warm", "cold"])
def test_smoke_table_has_every_default_system(smoke_warm_serial, table):
    out, res = smoke_warm_serial  # the warm run (conftest); cold reuses its general modules
    if table != "warm":
        res = publish_table(table, "smoke", out, log=lambda s: None)
    md = (out / f"{table}.md").read_text()
    for name in profiles.DEFAULT_SYSTEMS:
        cls = registry.resolve(name)
        row = next(c for c in res.results
                   if c.meta["class"] == f"{cls.__module__}:{cls.__qualname__}")
        assert f"| {row.system} |" in md or f"| {row.system} " in md
        assert len(row.users) == len(res.results[0].users)
    assert res.results[0].candidates_sha256[:12] in md
    assert (out / f"{table}.tex").exists()


@pytest.mark.slow
def test_smoke_fewshot_table_in_the_paper_table3_layout(tmp_path_factory):
    """`run --table fewshot`: both blocks (warm and cold, 10/20/30 %) as rows, the default
    systems TALLRec, 2nd Finetune and MoLoRec as columns, the invalid-answer rate beside
    2nd Finetune, the published Table 3 beside ours."""
    out = tmp_path_factory.getbasetemp() / "e2e"  # shared: backbone and general LoRA reused
    res = publish_table("fewshot", "smoke", out, reference="paper", log=lambda s: None)
    assert not res.failures
    assert {c.setting for c in res.results} == {
        f"fewshot{k}-{p}" for k in ("", "-cold") for p in (10, 20, 30)}
    md = (out / "fewshot.md").read_text()
    head = md.splitlines()[0]
    assert head.startswith("| Scenario | Sample % | TALLRec | 2nd Finetune | 2nd Finetune "
                           "invalid (generate) | MoLoRec |")
    rows = [line.split("|")[1:3] for line in md.splitlines()[2:8]]
    assert [[c.strip() for c in r] for r in rows] == [
        ["Warm-Start", "10%"], ["", "20%"], ["", "30%"],
        ["Cold-Start", "10%"], ["", "20%"], ["", "30%"]]
    assert "Published (paper, Table 3)" in md
    assert (out / "fewshot.tex").exists()
