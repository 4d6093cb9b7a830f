"""The backbone is identified by its weights, in every cell key and artifact key: two
checkpoints of one config, or a checkpoint replaced at the same path, never share a
cell or a LoRA; a backbone that is not there is an error, not a cached table."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import identity
from bench.runner import Variant, run_table
from molorec import backbone as B
from molorec.profiles import PROFILES
from molorec.systems import TALLRec
from protocols.errors import OptionError, OutputError
from protocols.files import load_protocol
from reports.publish import publish_table, rebuild
from tests.models import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
LLM = ["Backbone", "TALLRec", "MoLoRec-S"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(protocol titles' checkpoints A and B: same config and tokenizer, other weights;
    the results directory the smoke protocols are built in)."""
    root = tmp_path_factory.mktemp("identity")
    out = root / "out"
    run_table("warm", "smoke", out, systems=["Random"], log=lambda s: None)
    titles = load_protocol(next((out / "protocols").rglob("manifest.json")).parent).data.titles
    texts = sorted(titles.values())
    a = save_checkpoint(root / "ckpt-a", texts, seed=1)
    b = save_checkpoint(root / "ckpt-b", texts, seed=2)
    return a, b, out


def _cells(out: Path) -> dict[str, dict]:
    return {p.parent.parent.name: json.loads(p.read_text())
            for p in (out / "cells").rglob("cell.json")}


def _loras(out: Path) -> set[str]:
    base = out / "cache" / "molorec"
    return {f"{p.parent.name}/{p.name}" for p in base.glob("lora-*/*") if p.is_dir()}


def test_same_config_other_weights_is_another_backbone(checkpoints):
    a, b, _ = checkpoints
    assert json.loads((a / "config.json").read_text()) == json.loads(
        (b / "config.json").read_text())
    assert identity.model_sha256(a) != identity.model_sha256(b)
    cfg = PROFILES["tallrec"]["paper"]
    pa, pb = TALLRec.configure(cfg, str(a)), TALLRec.configure(cfg, str(b))
    assert pa["backbone"]["sha256"] != pb["backbone"]["sha256"]
    assert pa["backbone"]["label"] == "ckpt-a"  # from the model, not "Qwen2-7B"


def test_hashes_are_remembered_and_a_replaced_file_is_hashed_again(checkpoints, tmp_path,
                                                                  monkeypatch):
    a, b, _ = checkpoints
    ckpt = shutil.copytree(a, tmp_path / "ckpt")
    calls = []
    real = identity.file_sha256
    monkeypatch.setattr(identity, "file_sha256", lambda p: calls.append(p) or real(p))
    first = identity.model_sha256(ckpt)
    n = len(calls)
    assert n >= 3  # weights, config, tokenizer
    assert identity.model_sha256(ckpt) == first and len(calls) == n  # remembered
    shutil.copy2(b / "model.safetensors", ckpt / "model.safetensors")  # same size
    assert identity.model_sha256(ckpt) == identity.model_sha256(b) != first
    assert [Path(p).name for p in calls[n:]] == ["model.safetensors"]


def test_the_environment_variable_feeds_the_same_identity(checkpoints, monkeypatch):
    a, b, _ = checkpoints
    cfg = PROFILES["tallrec"]["paper"]
    monkeypatch.setenv("MOLOREC_BACKBONE_PATH", str(a))
    pa = TALLRec.configure(cfg)
    monkeypatch.setenv("MOLOREC_BACKBONE_PATH", str(b))
    pb = TALLRec.configure(cfg)
    assert pa["backbone"]["sha256"] == identity.model_sha256(a)
    assert pb["backbone"]["sha256"] == identity.model_sha256(b)
    assert pa["backbone"]["path"] == str(a.resolve())
    monkeypatch.setenv("MOLOREC_BACKBONE_PATH", "/nonexistent/model")
    with pytest.raises(B.BackboneError, match="nonexistent"):
        TALLRec.configure(cfg)
    # a pinned config read back by a worker uses its own path, not the environment
    monkeypatch.setenv("MOLOREC_BACKBONE_PATH", str(b))
    bb = B.ensure_backbone(pa["backbone"], (), {}, Path("."))
    assert Path(bb.path) == a.resolve()


def test_switching_or_replacing_the_backbone_recomputes_every_llm_cell_and_lora(
        checkpoints, tmp_path):
    a, b, out = checkpoints
    ckpt = shutil.copytree(a, tmp_path / "model")  # the path every run names
    systems = ["Random", *LLM]

    def run(force=False):
        res = run_table("warm", "smoke", out, systems=systems, force=force,
                        log=lambda s: None, variant=Variant(str(ckpt)))
        assert not res.failures, res.failures
        return _cells(out), _loras(out)

    cells_a, loras_a = run()
    assert {c["config"]["backbone"]["sha256"] for n, c in cells_a.items() if n in LLM} == {
        identity.model_sha256(a)}
    assert cells_a["Backbone"]["system"] == "model"  # the row is named after the model
    again, _ = run()
    assert {n: c["key"] for n, c in again.items()} == {n: c["key"] for n, c in cells_a.items()}

    # the same path, other weights (a new snapshot): every LLM cell and LoRA anew
    shutil.rmtree(ckpt)
    shutil.copytree(b, ckpt)
    for force in (False, True):
        cells_b, loras_b = run(force)
        for n in LLM:
            assert cells_b[n]["key"] != cells_a[n]["key"], n
            assert cells_b[n]["config"]["backbone"]["sha256"] == identity.model_sha256(b)
        assert cells_b["Random"]["key"] == cells_a["Random"]["key"]
        assert len(loras_b) == 2 * len(loras_a) and loras_a < loras_b
        tallrec_b = cells_b["TALLRec"]["describe"]["adapters"]
        assert tallrec_b != cells_a["TALLRec"]["describe"]["adapters"]  # trained on B


def test_a_missing_backbone_is_an_error_before_anything_is_written(checkpoints, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(OptionError, match="nonexistent"):
        publish_table("warm", "smoke", out, systems=["TALLRec"],
                      variant=Variant("/nonexistent/model"), log=lambda s: None)
    assert not out.exists()
    with pytest.raises(OptionError, match="no such .gguf"):
        run_table("warm", "smoke", out, systems=["TALLRec"],
                  variant=Variant(str(tmp_path / "missing.gguf")), log=lambda s: None)
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--table", "warm",
                           "--profile", "smoke", "--systems", "TALLRec", "--out", str(out),
                           "--backbone", "/nonexistent/model"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip().splitlines()[0]]
    assert proc.stderr.startswith("error: backbone '/nonexistent/model'")


def test_label_and_caption_come_from_the_model_and_tables_never_mix(checkpoints, tmp_path):
    a, b, _ = checkpoints
    out = tmp_path / "out"
    res = publish_table("warm", "smoke", out, systems=["Backbone"],
                        variant=Variant(str(a), "MyLM"), log=lambda s: None)
    assert "| MyLM |" in res.markdown and "LLM rows run on MyLM" in res.markdown
    assert "TinyQwen2" not in res.markdown
    res = publish_table("warm", "smoke", out, systems=["Backbone"], variant=Variant(str(b)),
                        log=lambda s: None)
    assert "| ckpt-b |" in res.markdown
    assert f"LLM rows run on ckpt-b (weights sha256 {identity.model_sha256(b)[:12]}, hf " \
           "backend" in res.markdown
    publish_table("warm", "smoke", out, systems=["TALLRec"], variant=Variant(str(a)),
                  log=lambda s: None)
    with pytest.raises(OutputError, match="mix cells of 2 backbones"):
        rebuild(out, "warm", log=lambda s: None)


def test_figures_and_explain_find_a_moved_backbone_by_its_hash(checkpoints, tmp_path):
    a, b, _ = checkpoints
    cfg = TALLRec.configure(PROFILES["tallrec"]["paper"], str(a))["backbone"]
    moved = shutil.copytree(a, tmp_path / "moved")
    found = B.relocate(cfg, str(moved))
    assert found["path"] == str(moved.resolve()) and found["sha256"] == cfg["sha256"]
    assert found["label"] == cfg["label"] == "ckpt-a"
    with pytest.raises(B.BackboneError, match="not the model the cells were computed with"):
        B.relocate(cfg, str(b))
    shutil.rmtree(moved)
    with pytest.raises(B.BackboneError, match="not at .*moved' any more: give where it is "
                                              "now with --backbone"):
        B.ensure_backbone(found, (), {}, tmp_path)


def test_explain_and_figures_take_the_backbone_where_it_moved(checkpoints, tmp_path, capsys):
    from bench import cli

    a, _, _ = checkpoints
    model = shutil.copytree(a, tmp_path / "model")
    out = tmp_path / "out"
    res = publish_table("warm", "smoke", out, systems=["MoLoRec"], variant=Variant(str(model)),
                        log=lambda s: None)
    assert not res.failures, res.failures
    user = res.results[0].users[0]
    moved = model.rename(tmp_path / "moved")
    capsys.readouterr()
    assert cli.main(["explain", "--out", str(out), "--user", user]) == 2
    err = capsys.readouterr().err
    assert "any more: give where it is now with --backbone" in err and err.count("\n") == 1
    assert cli.main(["explain", "--out", str(out), "--user", user,
                     "--backbone", str(moved)]) == 0
    assert "MoLoRec on model" in capsys.readouterr().out
    assert cli.main(["figures", "--out", str(out), "--figures", "5", "--prompts", "5",
                     "--settings", "warm", "--backbone", str(moved)]) == 0
    assert cli.main(["explain", "--out", str(out), "--user", user,
                     "--backbone", str(checkpoints[1])]) == 2
    assert "not the model the cells were computed with" in capsys.readouterr().err


def test_molorec_train_builds_the_artifacts_a_backbone_run_looks_for(checkpoints, tmp_path):
    from molorec import train

    a = checkpoints[0]
    work = tmp_path / "run"
    run_table("warm", "smoke", work, systems=["Random"], log=lambda s: None)  # the protocol
    proto = next((work / "protocols").rglob("manifest.json")).parent
    args = ["--protocol", str(proto), "--workdir", str(work / "cache"), "--profile", "smoke",
            "--system", "TALLRec", "--backbone", str(a), "--set", "TALLRec.lora.r=4"]
    assert train.main(args) == 0
    built = _loras(work)
    assert len(built) == 1
    res = run_table("warm", "smoke", work, systems=["TALLRec"], log=lambda s: None,
                    variant=Variant(str(a), overrides=("TALLRec.lora.r=4",)))
    assert not res.failures and _loras(work) == built  # found, not trained again


def test_a_model_in_the_hugging_face_cache_is_found_by_its_id(checkpoints, tmp_path,
                                                               monkeypatch):
    import huggingface_hub.constants as hf

    a = checkpoints[0]
    repo = tmp_path / "hub" / "models--acme--Tiny-Chat-1B"
    shutil.copytree(a, repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg = TALLRec.configure(PROFILES["tallrec"]["smoke"], "acme/Tiny-Chat-1B")["backbone"]
    assert cfg["kind"] == "pretrained" and cfg["path"] == "acme/Tiny-Chat-1B"
    assert cfg["label"] == "Tiny-Chat-1B" and cfg["sha256"] == identity.model_sha256(a)
    snapshot = repo / "snapshots" / "abc123"
    assert B.from_option(str(snapshot), None, {})["label"] == "Tiny-Chat-1B"
    with pytest.raises(B.BackboneError, match="nothing is downloaded"):
        TALLRec.configure(PROFILES["tallrec"]["smoke"], "acme/Not-Cached")


def test_a_gguf_file_is_keyed_by_its_sha256(tmp_path, monkeypatch):
    f = tmp_path / "my-model-Q4.gguf"
    f.write_bytes(b"GGUF one")
    cfg = TALLRec.configure(PROFILES["tallrec"]["cpu"], str(f))["backbone"]
    assert (cfg["kind"], cfg["file"], cfg["label"]) == ("gguf", str(f), "my-model-Q4")
    first = cfg["sha256"]
    f.write_bytes(b"GGUF two")
    assert TALLRec.configure(PROFILES["tallrec"]["cpu"], str(f))["backbone"]["sha256"] != first
    monkeypatch.setenv("MOLOREC_GGUF_PATH", str(f))  # the old variable: the same identity
    env = TALLRec.configure(PROFILES["tallrec"]["cpu"])["backbone"]
    assert env["file"] == str(f) and env["sha256"] == identity.model_sha256(f)
    monkeypatch.setenv("MOLOREC_GGUF_PATH", str(tmp_path / "gone.gguf"))
    with pytest.raises(B.BackboneError, match="does not exist"):
        TALLRec.configure(PROFILES["tallrec"]["cpu"])


def test_a_label_alone_names_the_row_and_builds_nothing(tmp_path):
    from molorec.testing import micro_config, synthetic

    data = synthetic()[0]
    cfg = micro_config("backbone")["backbone"]
    one = B.ensure_backbone(cfg, data.general, data.titles, tmp_path)
    two = B.ensure_backbone(TALLRec.configure({"backbone": cfg}, None, "Mine")["backbone"],
                            data.general, data.titles, tmp_path)
    assert (one.label, two.label) == ("TinyQwen2", "Mine")
    assert one.key == two.key and one.path == two.path
