"""The paper profile, run end to end on the CPU: `--profile paper` with only the data (raw
files in the paper's formats, tests/paper_data.py), the backbone (`--backbone`, a tiny
chat-templated Qwen2) and the text models (`--set`, tiny checkpoints) swapped, and epoch
counts cut with `--set`. Every system runs at least one cell on the paper's settings: the
warm table on MovieLens-1M (all 16 rows), the cold table on Amazon 2014 Beauty (its
general corpus from the eight categories of the paper's Table 4), and the few-shot table's
2nd Finetune; then `report`, `compare`, `figures` and `explain` read the result.

One change beyond epoch counts: RecLoRA tries one temperature instead of three (each one
trains a bank of 16 LoRAs; three tripled the table's time). What stays the paper's:
selection grids, batch sizes, gradient checkpointing, history lengths, 10 targets per
user, every validation user, 29 negatives, k-core 5, the cold fraction.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.cli import main
from protocols.files import read_jsonl
from tests.models import save_checkpoint
from tests.paper_data import _movies, write_paper_data
from tests.paper_models import tiny_text_models

pytestmark = pytest.mark.slow

EPOCHS = ("*.epochs=1", "*.pretrain_epochs=1", "VQ-Rec.opq_iters=2", "VQ-Rec.perm_epochs=1",
          "RecFormer.stage1_epochs=1", "RecFormer.stage2_epochs=1",
          "*.general.train.epochs=1", "*.specific.train.epochs=1",
          "*.tallrec.train.epochs=1", "*.finetune2.train.epochs=1",
          "RecLoRA.recommender.config.epochs=1", "RecLoRA.reclora.train.epochs=1",
          "MoLoRec.mixture.entropy.epochs=1", "RecLoRA.reclora.temperature=[10]")


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """(run, out, backbone): `run(table, *args)` is `bench run --profile paper` with the
    swapped data, backbone and text models and the cut epochs."""
    root = tmp_path_factory.mktemp("paper")
    old = os.environ.get("MOLOREC_BENCH_DATA")
    os.environ["MOLOREC_BENCH_DATA"] = str(write_paper_data(root / "data"))
    text = tiny_text_models(root / "text-models")
    titles = [t for _, t in _movies(450)] + [f"Beauty product {i}" for i in range(450)]
    backbone = save_checkpoint(root / "Qwen2-tiny-chat", titles, chat=True)
    sets = (*EPOCHS, f"UniSRec.text_model={text['bert']}", f"VQ-Rec.text_model={text['bert']}",
            f"RecFormer.text_model={text['longformer']}", f"P5.t5={text['t5']}")
    out = root / "out"

    def run(table: str, *args: str) -> int:
        return main(["run", "--table", table, "--profile", "paper", "--seeds", "0",
                     "--jobs", "1", "--backbone", str(backbone), "--out", str(out),
                     *(a for s in sets for a in ("--set", s)), *args])

    yield run, out, backbone
    if old is None:
        os.environ.pop("MOLOREC_BENCH_DATA", None)
    else:
        os.environ["MOLOREC_BENCH_DATA"] = old


def _cells(out: Path, dataset: str, setting: str) -> dict[str, dict]:
    root = out / "cells" / dataset / setting
    return {d.name: json.loads((d / "seed-0" / "cell.json").read_text())
            for d in sorted(root.iterdir())}


def test_every_system_runs_on_the_paper_profile(paper, capsys):
    run, out, backbone = paper
    assert run("warm", "--datasets", "ml-1m") == 0
    cells = _cells(out, "ml-1m", "warm")
    assert len(cells) == 16
    assert {c["profile"] for c in cells.values()} == {"paper"}
    # the rows that choose nothing skip the validation pass they would only report
    for row in ("Backbone", "MoLoRec-G"):
        assert not any(k.startswith("valid_") for k in cells[row]["describe"]), row
    assert "valid_ndcg@1" in cells["MoLoRec"]["describe"]  # a row that chooses reports it
    table = (out / "warm.md").read_text()
    assert "Qwen2-tiny-chat" in table and "Settings changed from the profile (--set)" in table
    manifest = json.loads((out / "protocols/ml-1m/warm/seed-0/manifest.json").read_text())
    assert manifest["options"]["general_from"] == ["ml-10m"]
    assert manifest["counts"]["general_users_removed_by_behaviour"] == 4  # the shared people

    # cold on Amazon: the eight-category general corpus, reviewers removed by id
    assert run("cold", "--datasets", "amazon2014-Beauty",
               "--systems", "Random,SASRec,Backbone") == 0
    manifest = json.loads(
        (out / "protocols/amazon2014-Beauty/cold/seed-0/manifest.json").read_text())
    assert len(manifest["options"]["general_from"]) == 8
    assert manifest["counts"]["general_users_removed_by_id"] == 16

    # few-shot: 2nd Finetune at every share, its generate-mode check on every test user
    assert run("fewshot", "--systems", "2nd-Finetune") == 0
    shares = {s: _cells(out, "ml-1m", s)["2nd-Finetune"]["describe"] for s in
              ("fewshot-10", "fewshot-20", "fewshot-30")}
    second = [[a for k, a in d["adapters"].items() if k.startswith("finetune2")][0]
              for d in shares.values()]
    used = [a["examples"] for a in second]
    assert used == sorted(used) and used[-1] < second[-1]["examples_full_setting"]
    assert all(0 <= d["invalid_check"]["invalid_rate"] <= 1 for d in shares.values())
    capsys.readouterr()

    # the commands that read a finished run
    assert main(["report", "--out", str(out)]) == 0
    assert main(["compare", "--out", str(out), "--table", "warm"]) == 0
    assert "MoLoRec" in capsys.readouterr().out
    assert main(["figures", "--out", str(out), "--figures", "4,5", "--prompts", "5",
                 "--settings", "warm"]) == 0
    assert (out / "figures").is_dir() and any((out / "figures").glob("*.png"))
    user = read_jsonl(out / "protocols/ml-1m/warm/seed-0/test_candidates.jsonl")[0]["user"]
    assert main(["explain", "--out", str(out), "--user", user]) == 0
    assert user in capsys.readouterr().out
