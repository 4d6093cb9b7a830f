"""RecLoRA's inference cost against TALLRec's (pytest-benchmark), side by side.

    MOLOREC_BENCH_CACHE=<dir> pytest tests/bench_reclora.py --benchmark-only -p no:cacheprovider

(MOLOREC_BENCH_USERS: users ranked, default 8; MOLOREC_BENCH_ROUNDS: timed rounds, default
3; MOLOREC_BENCH_WARMUP: untimed rounds before them, default 1.)

The cpu profile's backbone, Gemma-3-270M (converted once, cached under
$MOLOREC_BENCH_CACHE or a temporary directory), on real ML-100K validation users, with
random adapter weights (the cost does not depend on them); torch threads =
$MOLOREC_BENCH_THREADS (default: every core). Every variant ranks the same users:
- TALLRec: one LoRA (r 16, all linear layers) merged into the weights, its cpu prompts
  (10 titles), prefix and 30 candidates packed in one forward per user;
- RecLoRA's gated bank (N 4, r 8 on q and v, each user's own gates) on the same prompts:
  the price of an adapter that cannot be merged;
- RecLoRA as the cpu profile runs it: 5 recent titles, one user per forward or all users
  in one forward; the retrieval variant (5 titles per candidate, so only the header is
  shared);
- the gates themselves: SASRec's sequence vectors (untrained weights, the cpu settings)
  and the router for the same users;
- one training micro-batch of RecLoRA (forward and backward through bank and router).
Numbers go to BENCHMARKS.md, section "RecLoRA against TALLRec".
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from molorec.adapters import Adapter, save_peft
from molorec.gated import GatedBank, Router
from molorec.instructions import Example
from molorec.template import NO, YES, yes_no_parts
from tests import bench_setup

N_USERS = int(os.environ.get("MOLOREC_BENCH_USERS", "8"))
ROUNDS = int(os.environ.get("MOLOREC_BENCH_ROUNDS", "3"))  # timed rounds
WARMUP = int(os.environ.get("MOLOREC_BENCH_WARMUP", "1"))  # untimed rounds before them
GROUP = f"yes/no scoring, {N_USERS} ML-100K users x 30 candidates"
bench_setup.threads()


@pytest.fixture(scope="module")
def setup():
    from molorec.backends import ChoiceRequest, backend_class
    from molorec.reclora import RecLoRA

    work, proto = bench_setup.warm_protocol()
    system = RecLoRA(RecLoRA.config_for("cpu"), 0, work)
    system.train_artifacts(proto.data)  # the backbone (no adapter is trained here)
    system.backbone_key = system.artifacts.backbone.key
    system.model = system._start_backend().trainer_model()
    reqs = list(proto.valid.requests[:N_USERS])
    # the retrieval variant's title vectors, of these users' items only (the system embeds
    # every title once per backbone; that cost is not the ranking's)
    needed = sorted({i for r in reqs for i in (*r.history, *r.candidates)})
    system.vectors = dict(zip(needed, system._embed([system.titles[i] for i in needed],
                                                    system.model).numpy(), strict=True))

    # TALLRec: a random r-16 LoRA on every linear layer, merged by its own hf backend
    tallrec = backend_class("hf")(system.artifacts.backbone, sharing="packed")
    g = torch.Generator().manual_seed(0)
    lora = Adapter("tallrec", 2.0, {
        m: (torch.randn(16, mod.in_features, generator=g) * 0.01,
            torch.randn(mod.out_features, 16, generator=g) * 0.01)
        for m, mod in tallrec.model.named_modules()
        if isinstance(mod, torch.nn.Linear) and ".layers." in m})
    tallrec.set_adapter(save_peft(lora, Path(work) / "bench-tallrec-lora",
                                  system.artifacts.backbone.path))
    p = system.prompting
    parts = [ChoiceRequest(*yes_no_parts(system.enc, [system.titles[i] for i in r.history],
                                         [system.titles[c] for c in r.candidates],
                                         p.max_len, p.max_history)[:2]) for r in reqs]

    # RecLoRA: the cpu profile's bank with random B, random gates per user
    rc = system.rc
    system.bank = GatedBank(system.model, rc["n_loras"], rc["lora"]["r"], rc["lora"]["alpha"],
                            0.0, rc["lora"]["target_modules"])
    with torch.no_grad():
        for layer in system.bank.layers.values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.01)
    gates = torch.softmax(torch.randn(len(reqs), rc["n_loras"], generator=g), -1)
    system._gates = lambda histories: gates[:len(histories)]
    yield {"system": system, "requests": reqs, "tallrec": tallrec, "parts": parts,
           "proto": proto}
    tallrec.close()
    system.close()


def _tokens(parts) -> float:
    return float(np.mean([len(p) + sum(len(s) for s in ss) for p, ss in parts]))


def test_tallrec_merged_lora(benchmark, setup):
    benchmark.group = GROUP
    s, backend, parts = setup["system"], setup["tallrec"], setup["parts"]
    yes, no = s.enc.word(YES), s.enc.word(NO)
    benchmark.extra_info.update({"tokens_per_user": _tokens([(p.prefix, p.suffixes)
                                                             for p in parts]),
                                 "threads": torch.get_num_threads()})
    benchmark.pedantic(lambda: backend.yes_no(parts, yes, no), rounds=ROUNDS, iterations=1,
                       warmup_rounds=WARMUP)


@pytest.mark.parametrize("variant", [
    "gated bank, TALLRec's prompts (10 recent titles), 1 user per forward",
    "cpu profile: 5 recent titles, 1 user per forward",
    "cpu profile: 5 recent titles, all users in one forward",
    "cpu profile: 5 retrieved titles per candidate, 1 user per forward"])
def test_reclora(benchmark, setup, variant):
    benchmark.group = GROUP
    s, reqs = setup["system"], setup["requests"]
    s.history = "retrieval" if "retrieved" in variant else "recent"
    s.rc["short_history"] = 10 if "10 recent" in variant else 5
    s.rc["score_batch"] = len(reqs) if "all users" in variant else 1
    benchmark.extra_info.update({"tokens_per_user": _tokens([s._parts(r) for r in reqs]),
                                 "threads": torch.get_num_threads()})
    with torch.no_grad():
        benchmark.pedantic(lambda: s._rank(reqs), rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP)


def test_gates_from_sasrec_and_router(benchmark, setup):
    """What RecLoRA adds before the LLM: SASRec's vector of each history, the router."""
    from baselines.sasrec import SASRec

    benchmark.group = GROUP
    s, reqs = setup["system"], setup["requests"]
    rec = SASRec(s.config["recommender"]["config"], 0)
    with tempfile.TemporaryDirectory() as tmp:
        config, dataset = rec._setup(setup["proto"].data, Path(tmp))
        rec.model = rec._model_class()(config, dataset).eval()
    router = Router(64, s.rc["n_loras"]).eval()

    def gates():
        with torch.no_grad():
            return router(torch.from_numpy(rec.sequence_vectors([r.history for r in reqs])),
                          10.0)

    benchmark.pedantic(gates, rounds=5, iterations=1, warmup_rounds=1)


def test_reclora_training_micro_batch(benchmark, setup):
    """One micro-batch of the cpu profile's training (8 yes/no examples, 5 recent titles):
    forward and backward through the gated bank and the router (no optimizer step)."""
    from molorec.train_loop import answer_loss_sum, collate

    benchmark.group = "RecLoRA training, one micro-batch of 8 examples"
    s, reqs = setup["system"], setup["requests"]
    s.rc["short_history"] = 5
    yes = s.enc.word(YES)
    prompts = [s._prompt_for(r.history, r.candidates[j], "recent")
               for r in reqs for j in range(2)][:8]
    examples = [Example(p, (yes,)) for p in prompts]
    tok = s.enc.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else s.enc.eos
    router = Router(64, s.rc["n_loras"]).train()
    h = torch.randn(len(examples), 64, generator=torch.Generator().manual_seed(1))
    params = [*s.bank.parameters(), *router.parameters()]
    for p in params:
        p.requires_grad_(True)
    s.model.train()

    def step():
        for p in params:
            p.grad = None
        with s.bank.gated(router(h, 10.0)):
            answer_loss_sum(s.model, collate(examples, pad, "cpu")).backward()

    benchmark.extra_info.update({"tokens_per_example": float(np.mean([len(p) for p in prompts])),
                                 "threads": torch.get_num_threads()})
    try:
        benchmark.pedantic(step, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP)
    finally:
        s.model.eval()

