"""Where an LLM cell runs (pytest-benchmark), side by side:

    pytest tests/bench_parallel.py --benchmark-only -p no:cacheprovider

One LoRA training step of a Gemma-3-270M-sized model (random weights: the arithmetic is
the real model's; r 16 on every linear layer, 8 sequences x 128 tokens, the loss on the
last position only, as the cpu profile's answer tokens; bf16 autocast where the CPU has
native bf16), on every core, timed
- in the main process (a serial run),
- in a `--jobs` worker (bench.executors' local cluster),
- in a worker with Dask's default periodic work (its profiler samples the running task's
  stack every 10 ms, each server ticks every 20 ms, the system monitor every 500 ms).
The last two differ only in those three settings. Numbers go to BENCHMARKS.md, section
"Dask's periodic work".
"""

from __future__ import annotations

import os
from typing import Any

ROUNDS = 6
_MODEL: dict[str, Any] = {}  # per process: the model and its batch, built once


def _build() -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from molorec.lm import resolve_compute

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    config = Gemma3TextConfig(hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                              vocab_size=262144, sliding_window=512)
    model = get_peft_model(Gemma3ForCausalLM(config),
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    _MODEL.update(model=model, ids=torch.randint(0, 262144, (8, 128)),
                  compute=resolve_compute("auto", "cpu"))


def train_step() -> None:
    """One LoRA training step (forward, backward), building the model on the first call."""
    import torch

    from molorec.lm import autocast, logits_at

    if not _MODEL:
        _build()
    model, ids = _MODEL["model"], _MODEL["ids"]
    last = torch.arange(1, len(ids) + 1) * ids.shape[1] - 1
    with autocast(_MODEL["compute"], "cpu"):
        logits, _ = logits_at(model, last, input_ids=ids)
        loss = torch.nn.functional.cross_entropy(logits.float(), ids[:, 0])
    loss.backward()
    model.zero_grad(set_to_none=True)


DASK_DEFAULTS = {"distributed.worker.profile.enabled": True,
                 "distributed.admin.tick.interval": "20ms",
                 "distributed.admin.system-monitor.interval": "500ms"}


def _on_worker(benchmark: Any, monkeypatch: Any, dask_defaults: bool) -> None:
    from bench import executors

    if dask_defaults:
        ours = executors._local_config
        monkeypatch.setattr(executors, "_local_config", lambda: {**ours(), **DASK_DEFAULTS})
    with executors.DaskExecutor.local(1) as executor:
        client = executor.client
        client.submit(train_step, pure=False).result()  # build, warm up
        benchmark.pedantic(lambda: client.submit(train_step, pure=False).result(),
                           rounds=ROUNDS, iterations=1)


def test_train_step_in_the_main_process(benchmark):
    train_step()  # build, warm up
    benchmark.pedantic(train_step, rounds=ROUNDS, iterations=1)


def test_train_step_in_a_jobs_worker(benchmark, monkeypatch):
    _on_worker(benchmark, monkeypatch, dask_defaults=False)


def test_train_step_in_a_worker_with_dasks_defaults(benchmark, monkeypatch):
    _on_worker(benchmark, monkeypatch, dask_defaults=True)
