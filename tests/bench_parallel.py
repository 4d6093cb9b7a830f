"""Where an LLM cell runs (pytest-benchmark), side by side:

    pytest tests/bench_parallel.py --benchmark-only -p no:cacheprovider

The LLM rows' two kinds of work on Gemma-3-270M with the cpu profile's settings, on
every core (bf16 autocast where the CPU has native bf16): scoring 8 real ML-100K
validation requests x 30 candidates (packed, title vocabulary), and one LoRA training
step on a micro-batch of them (AdamW). Each is timed
- in the main process (as in a serial run),
- in a `--jobs` worker (bench.executors' local cluster),
- in a worker with Dask's default periodic work: its profiler samples the running task's
  stack every 10 ms, each server ticks every 20 ms, the system monitor every 500 ms. It
  differs from the `--jobs` worker in those three settings only.
The training step also runs in the main process with autograd's anomaly detection on, as
every cell after a RecBole sequential model trained until RecBole's SINE import was undone
(baselines/_recbole.py).
The backbone is converted once ($MOLOREC_BENCH_CACHE, else a temporary directory the
workers inherit). Numbers go to BENCHMARKS.md, section "Parallel cells", "LLM work in the
`run` process against a worker".
"""

from __future__ import annotations

import copy
import os
import tempfile
from typing import Any

import pytest

os.environ.setdefault("MOLOREC_BENCH_CACHE", tempfile.mkdtemp(prefix="bench-gemma-"))
N_REQUESTS = 8
ROUNDS = 5
_STATE: dict[str, Any] = {}  # per process: the system, its prompts, a LoRA model


def _setup() -> dict[str, Any]:
    if _STATE:
        return _STATE
    import torch
    from peft import LoraConfig, get_peft_model

    from molorec import systems as S
    from molorec.instructions import Example
    from molorec.profiles import PROFILES
    from molorec.train_loop import collate
    from tests import bench_setup

    bench_setup.threads()
    cpu = PROFILES["molorec"]["cpu"]
    work, proto = bench_setup.warm_protocol()
    system = S.MoLoRecS(copy.deepcopy(cpu), 0, work)
    system.train_artifacts(proto.data)  # the backbone only
    system._serve(None)
    cases = [system._prompt(r) for r in proto.valid.requests[:N_REQUESTS]]
    lora = cpu["lora"]
    peft_model = get_peft_model(copy.deepcopy(system.backend.model), LoraConfig(
        r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"]))
    peft_model.train()
    micro = cpu["specific"]["train"]["micro_batch_size"]
    params = [p for p in peft_model.parameters() if p.requires_grad]
    _STATE.update(system=system, cases=cases, peft=peft_model,
                  batch=collate([Example(p, a[0]) for p, a in cases[:micro]], 0, "cpu"),
                  opt=torch.optim.AdamW(params, lr=1e-4))
    return _STATE


def work(kind: str) -> None:
    """One round of `kind` (score / train), setting up this process on its first call."""
    import torch

    from molorec import ranking as R
    from molorec.lm import autocast, resolve_compute
    from molorec.train_loop import answer_loss_sum

    s = _setup()
    compute = resolve_compute("auto", "cpu")
    if kind == "score":
        with torch.no_grad(), autocast(compute, "cpu"):
            for prompt, answers in s["cases"]:
                R.answer_logprobs(s["system"].backend.model, prompt, answers, "packed",
                                  s["system"].vocab)
    else:
        with autocast(compute, "cpu"):
            loss = answer_loss_sum(s["peft"], s["batch"])
        loss.backward()
        s["opt"].step()
        s["opt"].zero_grad(set_to_none=True)


DASK_DEFAULTS = {"distributed.worker.profile.enabled": True,
                 "distributed.admin.tick.interval": "20ms",
                 "distributed.admin.system-monitor.interval": "500ms"}


@pytest.mark.parametrize("where", ["main process", "--jobs worker", "worker, Dask defaults"])
@pytest.mark.parametrize("kind", ["score", "train"])
def test_llm_work(benchmark, monkeypatch, kind, where):
    from bench import executors

    benchmark.group = f"{kind}: {N_REQUESTS} requests x 30 candidates" if kind == "score" \
        else f"{kind}: one LoRA step"
    if where == "main process":
        work(kind)  # set up, warm up
        benchmark.pedantic(work, args=(kind,), rounds=ROUNDS, iterations=1)
        return
    if where == "worker, Dask defaults":
        ours = executors._local_config
        monkeypatch.setattr(executors, "_local_config", lambda: {**ours(), **DASK_DEFAULTS})
    with executors.DaskExecutor.local(1) as executor:
        client = executor.client
        client.submit(work, kind, pure=False).result()  # set up, warm up
        benchmark.pedantic(lambda: client.submit(work, kind, pure=False).result(),
                           rounds=ROUNDS, iterations=1)


def test_train_step_with_anomaly_detection(benchmark):
    import torch

    benchmark.group = "train: one LoRA step"
    work("train")
    torch.autograd.set_detect_anomaly(True)
    try:
        work("train")  # warm up
        benchmark.pedantic(work, args=("train",), rounds=ROUNDS, iterations=1)
    finally:
        torch.autograd.set_detect_anomaly(False)
