"""`bench gpu-check`: refuses without a GPU unless asked, and on the CPU (`--cpu`) runs
the paper profile's LLM rows on an ML-1M slice and writes the BENCHMARKS-ready table."""

from __future__ import annotations

import os

import pytest

from bench.cli import main
from bench.gpu_check import projected_gpu_hours
from tests.models import save_checkpoint
from tests.paper_data import _movies, write_movielens
from tests.test_paper_dry_run import EPOCHS


def test_help_says_what_it_needs_and_writes(capsys):
    with pytest.raises(SystemExit):
        main(["gpu-check", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("--backbone", "ML-1M's raw files", "OUT/gpu-check.md", "peak GPU memory",
                  "projected GPU-hours", "Refuses without a CUDA GPU unless --cpu"):
        assert words in text


def test_without_a_gpu_it_refuses_in_one_line(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["gpu-check", "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a CUDA GPU" in err[0] and "--cpu" in err[0]
    assert not (tmp_path / "g").exists()


def test_projection_scales_with_users_and_seeds():
    one = projected_gpu_hours("MoLoRec-S", 100.0, 20.0, 200)
    assert one == pytest.approx(120 / 200 * (22363 + 19412 + 35598 + 6040) * 2 * 3 / 3600)
    assert projected_gpu_hours("MoLoRec", 100.0, 20.0, 200) > one  # plus the few-shot table


@pytest.mark.slow
def test_on_the_cpu_it_runs_the_llm_rows_and_writes_the_table(tmp_path, capsys):
    """Two of the rows (all seven run in tests/test_paper_dry_run.py's paper-profile run;
    here the slice, the table and the projection are what is checked)."""
    write_movielens(tmp_path / "data")
    backbone = save_checkpoint(tmp_path / "tiny-chat", [t for _, t in _movies(450)],
                               chat=True)
    old = os.environ.get("MOLOREC_BENCH_DATA")
    os.environ["MOLOREC_BENCH_DATA"] = str(tmp_path / "data")
    try:
        args = ["gpu-check", "--cpu", "--users", "20", "--backbone", str(backbone),
                "--systems", "Backbone,MoLoRec-S",
                "--out", str(tmp_path / "g"), *(a for s in EPOCHS for a in ("--set", s))]
        assert main(args) == 0
    finally:
        if old is None:
            os.environ.pop("MOLOREC_BENCH_DATA", None)
        else:
            os.environ["MOLOREC_BENCH_DATA"] = old
    text = (tmp_path / "g" / "gpu-check.md").read_text()
    assert text in capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 2  # the header and one row each
    assert rows[1].startswith("| tiny-chat |") and rows[2].startswith("| MoLoRec-S |")
    assert "checked on a GPU only" in text and "2nd-Finetune" in text  # the projection
    assert "- failed:" not in text
