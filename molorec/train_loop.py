"""One training loop for every stage (backbone pretraining, LoRA adapters).

Examples are (prompt, answer) token ids; the loss is the mean cross-entropy over the
answer tokens of a batch. Batches are split into length-sorted micro-batches to bound
memory and padding. Data-parallel over processes (`accelerate launch` / `torchrun`):
each process takes a share of every batch and the trainable gradients are summed with
an all-reduce before the step, so one process and many give the same update (up to
float summation order). Single-process runs need no launcher.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bench.seeding import seed_everything
from molorec.instructions import Example
from molorec.lm import autocast, logits_at


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    lr: float
    batch_size: int  # examples per optimizer step (all processes together)
    micro_batch_size: int  # examples per forward pass
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    compute: str = "float32"  # resolved precision (molorec.lm.resolve_compute)

    @classmethod
    def from_config(cls, cfg: dict) -> TrainSettings:
        known = {k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg}
        return cls(**known)


def _state():
    from accelerate import PartialState

    return PartialState()


def collate(examples: Sequence[Example], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-padded ids, attention mask, and labels (-100 outside the answers)."""
    n = max(len(e.prompt) + len(e.answer) for e in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    labels = torch.full((len(examples), n), -100, dtype=torch.long)
    for row, e in enumerate(examples):
        seq = list(e.prompt) + list(e.answer)
        ids[row, :len(seq)] = torch.tensor(seq)
        mask[row, :len(seq)] = 1
        labels[row, len(e.prompt):len(seq)] = torch.tensor(e.answer)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
            "labels": labels.to(device)}


def answer_loss_sum(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of answer-token cross-entropies (the caller divides by the batch's count),
    through the model's own forward, with the vocabulary projection only at the
    positions that predict an answer token (a few of a prompt's hundreds)."""
    labels = batch["labels"]
    width = labels.shape[1]
    follows = labels[:, 1:] != -100  # position t predicts token t + 1
    b, t = torch.nonzero(follows, as_tuple=True)
    logits, _ = logits_at(model, b * width + t, None, input_ids=batch["input_ids"],
                          attention_mask=batch["attention_mask"])
    return torch.nn.functional.cross_entropy(logits.float(), labels[b, t + 1],
                                             reduction="sum")


def train(model, examples: Sequence[Example], settings: TrainSettings, seed: int,
          pad_id: int, log_every: int | None = None, *,
          extra_params: Iterable[torch.nn.Parameter] = (),
          around: Callable[[Sequence[Example]], contextlib.AbstractContextManager] | None = None
          ) -> list[float]:
    """Train `model`'s parameters that require grad, and `extra_params` (a module outside
    the model, e.g. RecLoRA's router); returns the mean loss per epoch. `around(micro)`
    wraps the forward of each micro-batch (RecLoRA sets its examples' gates there).
    Progress is printed every `log_every` steps (default: $MOLOREC_LOG_EVERY, else off)."""
    if log_every is None:
        log_every = int(os.environ.get("MOLOREC_LOG_EVERY", "0"))
    if not examples:
        raise ValueError("no training examples")
    if any(not e.answer for e in examples):
        raise ValueError("an example has an empty answer")
    state = _state()
    rank, world = state.process_index, state.num_processes
    seed_everything(seed + rank)  # dropout differs per process, the data order does not
    model.to(state.device)
    model.train()
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_params)
    if not params:
        raise ValueError("the model has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(examples) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    warmup = max(1, int(settings.warmup_ratio * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    rng = np.random.default_rng(seed)
    history = []
    step = 0
    t0 = time.perf_counter()
    for _epoch in range(settings.epochs):
        order = rng.permutation(len(examples))
        epoch_loss, epoch_tokens = 0.0, 0
        for start in range(0, len(order), settings.batch_size):
            batch = [examples[j] for j in order[start:start + settings.batch_size]]
            n_tokens = sum(len(e.answer) for e in batch)
            batch.sort(key=lambda e: len(e.prompt) + len(e.answer))
            mine = batch[rank::world]
            local = 0.0
            for m in range(0, len(mine), settings.micro_batch_size):
                chunk = mine[m:m + settings.micro_batch_size]
                micro = collate(chunk, pad_id, state.device)
                # backward inside `around` too: gradient checkpointing reruns the forward
                with around(chunk) if around else contextlib.nullcontext():
                    with autocast(settings.compute, state.device):
                        loss = answer_loss_sum(model, micro)
                    (loss / n_tokens).backward()
                local += float(loss.detach())
            if world > 1:
                from accelerate.utils import reduce

                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    p.grad = reduce(p.grad, reduction="sum")
                local = float(reduce(torch.tensor(local, device=state.device), "sum"))
            if settings.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            epoch_loss += local
            epoch_tokens += n_tokens
            step += 1
            if log_every and step % log_every == 0 and state.is_main_process:
                print(f"step {step}/{total} loss {local / n_tokens:.4f} "
                      f"{time.perf_counter() - t0:.0f}s", flush=True)
        history.append(epoch_loss / epoch_tokens)
    model.eval()
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    return history
