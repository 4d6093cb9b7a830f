"""MoLoRec scoring on a GPU with a model of Qwen2-7B's shape (random bf16 weights: cost
does not depend on them; no checkpoint is needed). Skipped without CUDA.

    pytest tests/bench_molorec_gpu.py --benchmark-only -p no:cacheprovider

Prompts have the paper profile's size (20 history titles + 30 candidates, ~14 tokens a
title with Qwen's tokenizer on Amazon titles: ~800 tokens), answers 8-20 tokens.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from molorec import ranking as R
from molorec.lora import Adapter
from molorec.mixture import Mixture, learn_entropy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
N_REQUESTS = 8


@pytest.fixture(scope="module")
def model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                      num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                      max_position_embeddings=32768, tie_word_embeddings=False)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            m = Qwen2ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(torch.float32)
    m.requires_grad_(False)
    return m.eval()


def _cases(seed=0, n=N_REQUESTS):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prompt = rng.integers(10, 150000, size=int(rng.integers(700, 900))).tolist()
        answers = [rng.integers(10, 150000, size=int(rng.integers(8, 21))).tolist()
                   for _ in range(30)]
        out.append((prompt, answers))
    return out


def _score_all(model, cases, sharing):
    for prompt, answers in cases:
        if sharing == "naive":
            R.answer_logprobs_naive(model, prompt, answers)
        else:
            R.answer_logprobs(model, prompt, answers, sharing)
    torch.cuda.synchronize()


def test_gpu_scores_agree(model):
    prompt, answers = _cases(1, 1)[0]
    a, _ = R.answer_logprobs(model, prompt, answers, "packed")
    b, _ = R.answer_logprobs(model, prompt, answers, "batch")
    c, _ = R.answer_logprobs_naive(model, prompt, answers)
    # bf16: agreement to bf16 rounding of per-token log-probs
    assert np.corrcoef(a, c)[0, 1] > 0.99 and np.corrcoef(b, c)[0, 1] > 0.99


@pytest.mark.parametrize("sharing", ["packed", "batch", "naive"])
def test_gpu_scoring(benchmark, model, sharing):
    benchmark.group = f"GPU Qwen2-7B shape: {N_REQUESTS} requests x 30 candidates"
    cases = _cases()
    shared = sharing != "naive"
    benchmark.extra_info["tokens_per_request"] = float(np.mean(
        [R.tokens_processed(len(p), [len(a) for a in ans], shared) for p, ans in cases]))
    with torch.no_grad():
        benchmark.pedantic(_score_all, args=(model, cases, sharing), rounds=3, iterations=1,
                           warmup_rounds=1)


# -- HF against vLLM (needs vLLM as well; before the mixture tests, which install the
# mixture into the shared model) ----------------------------------------------------------
# users per second = N_REQUESTS / mean time. vLLM runs the same shape with dummy weights
# (`load_format="dummy"`: config only, no checkpoint); the score-mode LoRA is a random
# rank-32 adapter on every linear layer, the size of MoLoRec's concatenated mixture.
NEVER = 152064 + 1  # an end-of-sequence id outside the vocabulary: every answer is 64 long


@pytest.fixture(scope="class")
def vllm_backend(model, tmp_path_factory):
    from molorec import adapters as A
    from molorec.backbone import Backbone
    from molorec.backends import backend_class
    from molorec.backends.vllm import available

    if not available():
        pytest.skip("needs vLLM")
    path = tmp_path_factory.mktemp("qwen2-7b-shape")
    model.config.save_pretrained(path)
    adapter = _adapter(model, "mixture", 3, r=32)
    lora = A.save_peft(A.Adapter("mixture", 1.0, {m: (a.cpu(), b.cpu()) for m, (a, b)
                                                  in adapter.weights.items()}),
                       tmp_path_factory.mktemp("lora"), str(path))
    bb = Backbone(str(path), "bench", "Qwen2-7B shape", "bfloat16", False, "auto")
    be = backend_class("vllm")(bb, max_lora_rank=32, max_model_len=2048 + 64,
                               load_format="dummy", skip_tokenizer_init=True,
                               gpu_memory_utilization=0.45)
    yield be, lora
    be.close()


class TestHFvsVLLM:
    """One engine for both tests, closed (class scope) before the mixture tests."""

    @pytest.mark.parametrize("variant", ["hf batch", "vllm", "vllm + rank-32 LoRA"])
    def test_gpu_score(self, benchmark, model, vllm_backend, variant):
        from molorec.backends import AnswerRequest

        benchmark.group = f"GPU score mode, HF vs vLLM: {N_REQUESTS} users x 30 candidates"
        benchmark.extra_info["users"] = N_REQUESTS
        reqs = [AnswerRequest(tuple(p), tuple(tuple(a) for a in ans)) for p, ans in _cases(4)]
        if variant == "hf batch":
            with torch.no_grad():
                benchmark.pedantic(_score_all, args=(model, _cases(4), "batch"), rounds=3,
                                   iterations=1, warmup_rounds=1)
            return
        be, lora = vllm_backend
        be.set_adapter(lora if "LoRA" in variant else None)
        benchmark.pedantic(be.answer_logprobs, args=(reqs,), rounds=3, iterations=1,
                           warmup_rounds=1)

    @pytest.mark.parametrize("variant", ["hf", "vllm"])
    def test_gpu_generate(self, benchmark, model, vllm_backend, variant):
        benchmark.group = f"GPU generate mode, HF vs vLLM: {N_REQUESTS} users x 64 greedy tokens"
        benchmark.extra_info["users"] = N_REQUESTS
        prompts = [p for p, _ in _cases(5)]
        if variant == "hf":
            def run():
                with torch.no_grad():
                    for p in prompts:
                        R.greedy_decode(model, p, 64, NEVER)
                torch.cuda.synchronize()
        else:
            be, _ = vllm_backend
            be.set_adapter(None)

            def run():
                be.generate(prompts, 64, NEVER)
        benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=1)


def _adapter(model, name, seed, r=16):
    g = torch.Generator(device="cuda").manual_seed(seed)
    w = {}
    for mod, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and mod != "lm_head":
            w[mod] = (torch.randn(r, m.in_features, generator=g, device="cuda") * 0.01,
                      torch.randn(m.out_features, r, generator=g, device="cuda") * 0.01)
    return Adapter(name, 2.0, w)


@pytest.mark.parametrize("variant", ["plain", "unmerged", "merged"])
def test_gpu_mixture(benchmark, model, variant):
    """Runs last on the shared model: installs the mixture in place."""
    benchmark.group = "GPU mixture inference (packed scoring)"
    cases = _cases(2)
    if variant != "plain" and not hasattr(model, "_mix"):
        model._mix = Mixture(model, [_adapter(model, "general", 1),
                                     _adapter(model, "specific", 2)])
    if variant == "merged" and not model._mix.merged:
        model._mix.merge()
    with torch.no_grad():
        benchmark.pedantic(_score_all, args=(model, cases, "packed"), rounds=3, iterations=1,
                           warmup_rounds=1)


def test_gpu_entropy_step(benchmark, model):
    benchmark.group = "GPU entropy-guided learning (50 prompts, k=3, 1 epoch, batch 10)"
    mix = model._mix
    if mix.merged:
        mix.unmerge()
    prompts = [p for p, _ in _cases(3, 50)]

    def run():
        with torch.enable_grad():
            learn_entropy(mix, prompts, k=3, lr=0.01, epochs=1, batch_size=10, eos=0, seed=0,
                          micro_batch_size=2)
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=1, iterations=1)

