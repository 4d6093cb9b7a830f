"""Backbone kinds are registered; a GGUF backbone is found offline, converted once, and
is a real pretrained model (the cpu profile's Gemma-3-270M from its PyPI package)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from molorec import backbone as B
from molorec import gguf
from molorec.backends import AnswerRequest, backend_class
from molorec.template import Encoder
from protocols.digest import file_sha256


def test_kinds_are_registered_and_unknown_kinds_get_a_suggestion(tmp_path):
    assert {"tiny", "pretrained", "gguf"} <= set(B.KINDS)
    with pytest.raises(ValueError, match="Did you mean 'gguf'"):
        B.ensure_backbone({"kind": "ggfu"}, (), {}, tmp_path)
    with pytest.raises(ValueError, match="already registered"):
        B.backbone_kind("tiny")(lambda *a: None)


def test_gguf_sources_fail_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("MOLOREC_GGUF_PATH", raising=False)
    with pytest.raises(gguf.GGUFError, match="does not exist"):
        gguf.resolve_source({"file": str(tmp_path / "missing.gguf")}, tmp_path)
    with pytest.raises(gguf.GGUFError, match="pip install no-such-gguf-package"):
        gguf.resolve_source({"package": "no_such_gguf_package"}, tmp_path)
    local = tmp_path / "model.gguf"
    local.write_bytes(b"not really a gguf")
    monkeypatch.setenv("MOLOREC_GGUF_PATH", str(local))  # the environment wins
    src = gguf.resolve_source({"file": "elsewhere.gguf"}, tmp_path)
    assert src.path == local and src.sha256 == file_sha256(local)


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    pytest.importorskip(gguf.DEFAULT_PACKAGE)
    work = tmp_path_factory.mktemp("gemma")
    cfg = {"kind": "gguf", "label": "Gemma3-270M", "compute": "float32"}
    t0 = time.perf_counter()
    bb = B.ensure_backbone(cfg, (), {}, work)
    first = time.perf_counter() - t0
    return bb, cfg, work, first


@pytest.mark.slow  # the first conversion takes about a minute
def test_gemma_is_converted_once_and_reloaded_from_the_cache(gemma):
    bb, cfg, work, first = gemma
    assert bb.label == "Gemma3-270M" and (work / "molorec" / "backbone").is_dir()
    t0 = time.perf_counter()
    again = B.ensure_backbone(cfg, (), {}, work)
    assert again == bb and time.perf_counter() - t0 < first
    assert len(list((work / "molorec" / "backbone").iterdir())) == 1


@pytest.mark.slow
def test_gemma_knows_movies(gemma):
    """Only a pretrained model prefers a real title to the same tokens shuffled."""
    bb = gemma[0]
    be = backend_class("hf")(bb)
    enc = Encoder(be.tokenizer)
    assert enc.pre == (be.tokenizer.bos_token_id,)  # Gemma's prompts start with <bos>
    prompt = enc.pre + enc.ids("My favourite movies:\nThe Lion King (1994)\nAladdin (1992)\n")
    titles = ["Toy Story (1995)", "Beauty and the Beast (1991)", "Jurassic Park (1993)"]
    answers, shuffled = [], []
    rng = np.random.default_rng(0)
    for t in titles:
        ids = enc.ids(t)
        answers.append(ids)
        perm = list(ids)
        while perm == list(ids):
            perm = [ids[j] for j in rng.permutation(len(ids))]
        shuffled.append(tuple(perm))
    real, fake = be.answer_logprobs([AnswerRequest(prompt, tuple(answers)),
                                     AnswerRequest(prompt, tuple(shuffled))])
    assert (real > fake + 5).all()  # nats
