"""MoLoRec scoring benchmarks (pytest-benchmark), side by side in one run.

    pytest tests/bench_molorec.py --benchmark-only -p no:cacheprovider

On real ML-100K prompts (embedded dataset, tokenizer trained here) and a model of the
cpu profile's shape (random weights: cost does not depend on them):
- scoring: one prefill + all 30 candidates on its KV cache (packed / batch) against naive
  per-candidate scoring; tokens processed per request are reported next to the limit
  (the prompt once plus every candidate once);
- mixture: merged vs unmerged mixture inference vs the plain backbone;
- entropy: entropy-guided theta learning (cpu profile settings) vs one validation
  evaluation.
Numbers go to BENCHMARKS.md, section "MoLoRec scoring".
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from molorec import ranking as R
from molorec.backbone import train_tokenizer
from molorec.lora import Adapter
from molorec.mixture import Mixture, learn_entropy
from molorec.profiles import COMMON
from molorec.template import Encoder, rank_prompt, template_texts

torch.set_num_threads(1)
N_REQUESTS = 8
CPU = COMMON["cpu"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from protocols.build import build_protocol
    from protocols.files import load_protocol

    root = tmp_path_factory.mktemp("bench") / "warm"
    build_protocol("ml-100k", "warm", 0, root)
    proto = load_protocol(root)
    titles = proto.data.titles
    tok = train_tokenizer([t + "\n" for t in sorted(set(titles.values()))]
                          + list(template_texts()) * 50, CPU["backbone"]["vocab_size"])
    enc = Encoder(tok)
    b = CPU["backbone"]
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tok), hidden_size=b["hidden_size"],
        intermediate_size=b["intermediate_size"], num_hidden_layers=b["num_hidden_layers"],
        num_attention_heads=b["num_attention_heads"],
        num_key_value_heads=b["num_key_value_heads"], head_dim=b["head_dim"],
        max_position_embeddings=b["max_position_embeddings"], tie_word_embeddings=True)).eval()
    model.requires_grad_(False)

    def prompt_of(req):
        cands = [titles[c] for c in req.candidates]
        answers = [enc.answer(t) for t in cands]
        p = rank_prompt(enc, [titles[i] for i in req.history], cands,
                        CPU["prompt"]["max_len"], max(len(a) for a in answers),
                        CPU["prompt"]["max_history"])
        return p.ids, answers

    cases = [prompt_of(r) for r in proto.valid.requests[:N_REQUESTS]]
    return {"model": model, "cases": cases, "enc": enc, "proto": proto, "prompt_of": prompt_of}


def _score_all(model, cases, sharing):
    for prompt, answers in cases:
        if sharing == "naive":
            R.answer_logprobs_naive(model, prompt, answers)
        else:
            R.answer_logprobs(model, prompt, answers, sharing)


@pytest.mark.parametrize("sharing", ["packed", "batch", "naive"])
def test_scoring(benchmark, setup, sharing):
    benchmark.group = f"scoring {N_REQUESTS} ML-100K requests x 30 candidates"
    cases = setup["cases"]
    shared = sharing != "naive"
    tokens = [R.tokens_processed(len(p), [len(a) for a in ans], shared) for p, ans in cases]
    limit = [R.tokens_processed(len(p), [len(a) for a in ans], True) for p, ans in cases]
    benchmark.extra_info.update({
        "tokens_per_request": float(np.mean(tokens)), "limit_per_request": float(np.mean(limit)),
        "prompt_tokens": float(np.mean([len(p) for p, _ in cases]))})
    with torch.no_grad():
        benchmark.pedantic(_score_all, args=(setup["model"], cases, sharing),
                           rounds=3 if shared else 1, iterations=1, warmup_rounds=1)


def _random_adapter(model, name: str, seed: int, r: int = 16) -> Adapter:
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for mod, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and mod != "lm_head":
            weights[mod] = (torch.randn(r, m.in_features, generator=g) * 0.05,
                            torch.randn(m.out_features, r, generator=g) * 0.05)
    return Adapter(name, 2.0, weights)


@pytest.fixture(scope="module")
def mixed(setup):
    model = copy.deepcopy(setup["model"])
    mix = Mixture(model, [_random_adapter(model, "general", 1),
                          _random_adapter(model, "specific", 2)])
    return mix


@pytest.mark.parametrize("variant", ["plain backbone", "merged mixture", "unmerged mixture"])
def test_mixture_inference(benchmark, setup, mixed, variant):
    benchmark.group = f"mixture inference, {N_REQUESTS} requests (packed scoring)"
    model = setup["model"] if variant == "plain backbone" else mixed.model
    if variant == "merged mixture" and not mixed.merged:
        mixed.merge()
    if variant == "unmerged mixture" and mixed.merged:
        mixed.unmerge()
    with torch.no_grad():
        benchmark.pedantic(_score_all, args=(model, setup["cases"], "packed"), rounds=3,
                           iterations=1, warmup_rounds=1)


def test_entropy_learning(benchmark, setup, mixed):
    e = CPU["mixture"]["entropy"]
    benchmark.group = "entropy-guided learning vs one validation evaluation"
    if mixed.merged:
        mixed.unmerge()
    reqs = setup["proto"].valid.requests[:e["n_prompts"]]
    prompts = [setup["prompt_of"](r)[0] for r in reqs]
    benchmark.extra_info.update({"n_prompts": len(prompts), "epochs": e["epochs"],
                                 "batch_size": e["batch_size"], "k": e["k"]})

    def run():
        mixed.set_weights([0.5, 0.5])
        with torch.enable_grad():
            learn_entropy(mixed, prompts, k=e["k"], lr=0.1, epochs=e["epochs"],
                          batch_size=e["batch_size"], eos=setup["enc"].eos, seed=0)

    benchmark.pedantic(run, rounds=1, iterations=1)


def test_one_validation_evaluation(benchmark, setup, mixed):
    benchmark.group = "entropy-guided learning vs one validation evaluation"
    if not mixed.merged:
        mixed.merge()
    reqs = setup["proto"].valid.requests
    benchmark.extra_info["requests"] = len(reqs)

    def run():
        with torch.no_grad():
            _score_all(mixed.model, [setup["prompt_of"](r) for r in reqs], "packed")

    benchmark.pedantic(run, rounds=1, iterations=1)
