"""HF against vLLM on the CPU, side by side in one run (pytest-benchmark); needs vLLM.

    MOLOREC_TEST_CACHE=<dir> pytest tests/bench_vllm.py --benchmark-only -p no:cacheprovider

The cpu profile's backbone (Gemma-3-270M, fp32, converted from its GGUF) on real
ML-100K validation users; users per second is N_USERS / mean time:
- score mode, the cpu profile's prompts (history only, no candidate list): hf packed
  scoring over the whole vocabulary, the same over the title tokens (`ranking.vocab:
  titles`, what the cpu profile runs), and vllm (one request per candidate on the prefix
  cache; whole vocabulary only);
- generate mode, prompts listing the 30 candidates, greedy up to 48 tokens: hf (one user
  at a time) and vllm (all users in one call).
Both run one thread: the engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0),
where vLLM sets torch to one thread, as the runner does for hf. Numbers go to
BENCHMARKS.md, section "vLLM backend".
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from molorec.backends.vllm import available

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
pytestmark = pytest.mark.skipif(not available(), reason="needs vLLM (tox -e vllm)")
N_USERS = 8
MAX_NEW = 48


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from molorec import gguf
    from molorec.backbone import ensure_backbone
    from molorec.backends import backend_class
    from molorec.profiles import COMMON
    from molorec.template import Encoder, rank_prompt
    from protocols.build import build_protocol
    from protocols.files import load_protocol

    pytest.importorskip(gguf.DEFAULT_PACKAGE)
    torch.set_num_threads(1)
    work = os.environ.get("MOLOREC_TEST_CACHE") or tmp_path_factory.mktemp("gemma")
    bb = ensure_backbone({**COMMON["cpu"]["backbone"], "compute": "float32"}, (), {}, work)
    root = tmp_path_factory.mktemp("bench") / "warm"
    build_protocol("ml-100k", "warm", 0, root)
    proto = load_protocol(root)
    titles = proto.data.titles
    hf = backend_class("hf")(bb)
    enc = Encoder(hf.tokenizer)
    prompt_cfg = COMMON["cpu"]["prompt"]

    def case(req, listed):
        cands = [titles[c] for c in req.candidates]
        answers = tuple(enc.answer(t) for t in cands)
        p = rank_prompt(enc, [titles[i] for i in req.history], cands, prompt_cfg["max_len"],
                        max(len(a) for a in answers), prompt_cfg["max_history"], listed)
        return p.ids, answers

    reqs = proto.valid.requests[:N_USERS]
    vocab = torch.tensor(sorted({t for title in titles.values() for t in enc.answer(title)}))
    t0 = time.perf_counter()
    vl = backend_class("vllm")(bb, max_lora_rank=0, max_model_len=prompt_cfg["max_len"]
                               + MAX_NEW)
    start = time.perf_counter() - t0
    yield {"hf": hf, "vllm": vl, "enc": enc, "vocab": vocab, "engine_start_s": start,
           "score": [case(r, False) for r in reqs], "generate": [case(r, True)[0] for r in reqs]}
    vl.close()


def _extra(benchmark, setup, cases):
    benchmark.extra_info.update({
        "users": N_USERS, "prompt_tokens": float(np.mean([len(p) for p in cases])),
        "vllm_engine_start_s": round(setup["engine_start_s"], 1)})


@pytest.mark.parametrize("variant", ["hf", "hf titles vocab", "vllm"])
def test_score_mode(benchmark, setup, variant):
    from molorec.backends import AnswerRequest

    benchmark.group = f"score mode, Gemma-3-270M, {N_USERS} ML-100K users x 30 candidates"
    reqs = [AnswerRequest(p, a) for p, a in setup["score"]]
    _extra(benchmark, setup, [p for p, _ in setup["score"]])
    backend = setup["vllm" if variant == "vllm" else "hf"]
    vocab = setup["vocab"] if variant == "hf titles vocab" else None
    with torch.no_grad():
        benchmark.pedantic(backend.answer_logprobs, args=(reqs, vocab), rounds=1,
                           iterations=1, warmup_rounds=1 if variant == "vllm" else 0)
    if variant == "vllm":
        benchmark.extra_info.update(setup["vllm"].stats)


@pytest.mark.parametrize("variant", ["hf", "vllm"])
def test_generate_mode(benchmark, setup, variant):
    benchmark.group = f"generate mode, Gemma-3-270M, {N_USERS} users, greedy <= {MAX_NEW} tokens"
    _extra(benchmark, setup, setup["generate"])
    backend = setup[variant]
    out = {}

    def run():
        out["gen"] = backend.generate(setup["generate"], MAX_NEW, setup["enc"].eos)

    with torch.no_grad():
        benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info["generated_tokens"] = sum(len(g) for g in out["gen"])
