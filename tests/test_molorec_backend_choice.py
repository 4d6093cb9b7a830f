"""Choosing the LLM backend, without vLLM installed: `auto` falls back to hf with a
warning, vllm's settings come from the row and the profile, what vLLM cannot do is
refused before an engine starts, and the table caption names the backend."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest

from molorec import backends
from molorec import systems as S
from molorec.backends import vllm as V
from molorec.profiles import COMMON
from molorec.testing import micro_config
from reports.publish import caption_notes


def test_auto_is_vllm_where_installed_else_hf_with_a_warning(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.warns(RuntimeWarning, match="pip install vllm"):
        assert backends.resolve("auto") == "hf"
    assert backends.resolve("hf") == "hf" and backends.resolve("vllm") == "vllm"
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "vllm" else real(name, *a))
    assert backends.resolve("auto") == "vllm"


def test_missing_vllm_and_unknown_backends_say_what_to_do(monkeypatch):
    monkeypatch.setattr(V, "available", lambda: False)
    with pytest.raises(V.VLLMUnavailable, match="pip install vllm.*ranking.backend: hf"):
        V.VLLMBackend(None)
    with pytest.raises(ValueError, match="Did you mean 'vllm'"):
        backends.backend_class("vlm")


def test_only_the_paper_profile_asks_for_vllm():
    assert COMMON["paper"]["ranking"]["backend"] == "auto"
    assert all(COMMON[p]["ranking"].get("backend", "hf") == "hf" for p in ("smoke", "cpu"))


@pytest.mark.parametrize(("cls", "key", "rank"), [
    (S.Backbone, "backbone", 0), (S.TALLRec, "tallrec", 4), (S.MoLoRecS, "molorec-s", 4),
    (S.MoLoRec, "molorec", 8)])
def test_vllm_settings_come_from_the_row_and_profile(tmp_path, cls, key, rank):
    """The mixture is served as one LoRA of rank r_g + r_s, so MoLoRec needs twice r."""
    cfg = micro_config(key, ranking={"backend": "vllm", "vllm": {"block_size": 64}})
    row = cls(cfg, 0, str(tmp_path))
    opts = row._backend_options("vllm")
    assert opts == {"max_lora_rank": rank, "max_model_len": cfg["prompt"]["max_len"]
                    + cfg["ranking"]["max_new_tokens"], "block_size": 64}
    assert row._backend_options("hf") == {}


def test_a_title_vocabulary_is_refused_before_any_engine_starts(tmp_path):
    row = S.MoLoRecS(micro_config("molorec-s", ranking={"backend": "vllm", "vocab": "titles"}),
                     0, str(tmp_path))
    with pytest.raises(ValueError, match="ranking.vocab: full"):
        row._backend_options("vllm")


def test_the_caption_names_the_backend(tmp_path):
    row = S.MoLoRecS(micro_config("molorec-s"), 0, str(tmp_path))
    row.info.update({"backbone": "TinyQwen2", "backend": "vllm", "vllm": "0.32.0"})
    note = row.describe()["caption_note"]
    assert "TinyQwen2 (vllm 0.32.0 backend)" in note and "score mode" in note
    cells = [SimpleNamespace(meta={"describe": row.describe()})] * 2 + [
        SimpleNamespace(meta={"describe": {}})]
    assert caption_notes(cells) == [note]  # stated once
    assert caption_notes([SimpleNamespace(meta={})]) == []
