"""LLM-row benchmarks on the cpu profile's backbone (pytest-benchmark), side by side.

    pytest tests/bench_molorec.py --benchmark-only -p no:cacheprovider

Gemma-3-270M (converted from its PyPI GGUF once, cached under $MOLOREC_BENCH_CACHE or a
temporary directory) on real ML-100K validation prompts with the cpu profile's prompt
settings, torch threads = $MOLOREC_BENCH_THREADS (default: every core):
- score mode: the prompt and the 30 candidates in one packed forward, with the softmax
  over the title vocabulary (the cpu profile) or the full 262k vocabulary; the KV-cache
  `batch` variant; naive per-candidate scoring (tokens processed per request reported);
- TALLRec's yes/no scoring of the same requests;
- one LoRA training step (the cpu profile's micro-batch) and entropy-guided learning
  against one validation evaluation.
Numbers go to BENCHMARKS.md, section "LLM scoring and training: unit costs".
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from molorec import ranking as R
from molorec.profiles import PROFILES
from tests import bench_setup

N_REQUESTS = 8
CPU = PROFILES["molorec"]["cpu"]
bench_setup.threads()


@pytest.fixture(scope="module")
def setup():
    from molorec import systems as S

    work, proto = bench_setup.warm_protocol()
    system = S.MoLoRecS(copy.deepcopy(CPU), 0, work)
    system.train_artifacts(proto.data)  # the backbone only (no adapter is trained here)
    system._serve(None)
    reqs = proto.valid.requests[:N_REQUESTS]
    return {"system": system, "model": system.backend.model, "proto": proto,
            "cases": [system._prompt(r) for r in reqs], "requests": reqs}


def _score(model, cases, sharing, vocab):
    for prompt, answers in cases:
        if sharing == "naive":
            R.answer_logprobs_naive(model, prompt, answers, vocab)
        else:
            R.answer_logprobs(model, prompt, answers, sharing, vocab)


@pytest.mark.parametrize("variant", ["packed, title vocab", "packed, full vocab",
                                     "batch, title vocab", "naive, title vocab"])
def test_scoring(benchmark, setup, variant):
    benchmark.group = f"score mode, {N_REQUESTS} ML-100K requests x 30 candidates"
    sharing = variant.split(",")[0]
    vocab = setup["system"].vocab if "title" in variant else None
    cases = setup["cases"]
    shared = sharing != "naive"
    benchmark.extra_info.update({
        "tokens_per_request": float(np.mean([R.tokens_processed(
            len(p), [len(a) for a in ans], shared) for p, ans in cases])),
        "prompt_tokens": float(np.mean([len(p) for p, _ in cases])),
        "vocab": len(vocab) if vocab is not None else "full",
        "threads": torch.get_num_threads()})
    with torch.no_grad():
        benchmark.pedantic(_score, args=(setup["model"], cases, sharing, vocab),
                           rounds=1 if sharing == "naive" else 3, iterations=1,
                           warmup_rounds=0 if sharing == "naive" else 1)


def test_yes_no(benchmark, setup):
    """TALLRec's cost: prefix (history, question) and 30 short candidate suffixes packed."""
    from molorec.backends import ChoiceRequest
    from molorec.template import NO, YES, yes_no_parts

    benchmark.group = f"score mode, {N_REQUESTS} ML-100K requests x 30 candidates"
    s = setup["system"]
    parts = []
    for r in setup["requests"]:
        prefix, suffixes, _ = yes_no_parts(
            s.enc, [s.titles[i] for i in r.history], [s.titles[c] for c in r.candidates],
            s.prompting.max_len, s.prompting.max_history)
        parts.append(ChoiceRequest(prefix, tuple(suffixes)))
    yes, no = s.enc.word(YES), s.enc.word(NO)
    benchmark.pedantic(lambda: s.backend.yes_no(parts, yes, no), rounds=3, iterations=1,
                       warmup_rounds=1)


def test_lora_training_step(benchmark, setup):
    from peft import LoraConfig, get_peft_model

    from molorec.train_loop import answer_loss_sum, collate

    benchmark.group = "training and mixture learning"
    model = copy.deepcopy(setup["model"])
    lora = CPU["lora"]
    peft_model = get_peft_model(model, LoraConfig(
        r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"]))
    from molorec.instructions import Example

    micro = CPU["specific"]["train"]["micro_batch_size"]
    examples = [Example(p, a[0]) for p, a in setup["cases"][:micro]]
    batch = collate(examples, 0, "cpu")
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    benchmark.extra_info["examples"] = len(examples)

    def step():
        loss = answer_loss_sum(peft_model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    peft_model.train()
    benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)


def test_entropy_learning(benchmark, setup):
    from molorec.adapters import Adapter
    from molorec.mixture import Mixture, learn_entropy

    benchmark.group = "training and mixture learning"
    e = CPU["mixture"]["entropy"]
    model = copy.deepcopy(setup["model"])
    g = torch.Generator().manual_seed(0)
    adapters = []
    for name in ("general", "specific"):
        weights = {mod: (torch.randn(16, m.in_features, generator=g) * 0.01,
                         torch.randn(m.out_features, 16, generator=g) * 0.01)
                   for mod, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and "layers." in mod}
        adapters.append(Adapter(name, 2.0, weights))
    mix = Mixture(model, adapters)
    reqs = setup["proto"].valid.requests[:e["n_prompts"]]
    prompts = [setup["system"]._prompt(r)[0] for r in reqs]
    benchmark.extra_info.update({"n_prompts": len(prompts), "epochs": e["epochs"]})

    def run():
        mix.set_weights([0.5, 0.5])
        with torch.enable_grad():
            learn_entropy(mix, prompts, k=e["k"], lr=0.1, epochs=e["epochs"],
                          batch_size=e["batch_size"], micro_batch_size=e["micro_batch_size"],
                          eos=setup["system"].enc.eos, seed=0)

    benchmark.pedantic(run, rounds=1, iterations=1)


def test_one_validation_user(benchmark, setup):
    """Per-user cost of a validation (or test) pass in the cpu profile's score mode."""
    benchmark.group = "training and mixture learning"
    system = setup["system"]
    with torch.no_grad():
        benchmark.pedantic(lambda: system.score(setup["requests"]), rounds=3, iterations=1)
    benchmark.extra_info["users"] = len(setup["requests"])
