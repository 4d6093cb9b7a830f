"""Mixture of LoRA: several named adapters on one frozen backbone, mixed per layer.

Each adapted linear layer computes  W x + sum_i w_i * B_i A_i x * (alpha_i / r_i)  with
w = softmax(theta) for that layer (theta is the only trainable tensor). `merge()` folds
the mixture into W, so inference then costs exactly one plain model; `unmerge()` takes
it back out. Three ways to set theta: fixed weights, a grid search scored on the
validation candidates, or entropy-guided learning on unlabeled prompts (the paper's
test-time objective: mean entropy of the next-token distribution over the first k
answer tokens, gradients into theta alone).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from molorec.lora import Adapter
from molorec.ranking import greedy_decode


class MixtureLinear(nn.Module):
    """A frozen linear layer plus a softmax-weighted sum of named LoRA updates."""

    def __init__(self, base: nn.Linear, names: Sequence[str],
                 mats: Sequence[tuple[torch.Tensor, torch.Tensor] | None],
                 scalings: Sequence[float]):
        super().__init__()
        self.base = base
        self.names = list(names)
        self.present = [m is not None for m in mats]
        self.scalings = [float(s) for s in scalings]
        dev = base.weight.device
        for i, m in enumerate(mats):
            if m is not None:
                a, b = m
                if a.shape[1] != base.in_features or b.shape[0] != base.out_features:
                    raise ValueError(f"adapter {names[i]!r} does not fit a "
                                     f"{base.in_features}->{base.out_features} layer")
                self.register_buffer(f"lora_A_{i}", a.to(dev, torch.float32))
                self.register_buffer(f"lora_B_{i}", b.to(dev, torch.float32))
        self.theta = nn.Parameter(torch.zeros(len(names), device=dev))
        self.merged_delta: torch.Tensor | None = None

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.theta.float(), dim=0)

    def delta(self) -> torch.Tensor:
        """sum_i w_i * scaling_i * B_i A_i (out x in), in float32."""
        w = self.weights()
        out = torch.zeros_like(self.base.weight, dtype=torch.float32)
        for i, present in enumerate(self.present):
            if present:
                out = out + (w[i] * self.scalings[i]) * (
                    getattr(self, f"lora_B_{i}") @ getattr(self, f"lora_A_{i}"))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged_delta is not None:
            return y
        w = self.weights()
        xf = x.float()
        extra = None
        for i, present in enumerate(self.present):
            if present:
                h = (xf @ getattr(self, f"lora_A_{i}").T) @ getattr(self, f"lora_B_{i}").T
                h = (w[i] * self.scalings[i]) * h
                extra = h if extra is None else extra + h
        return y if extra is None else y + extra.to(y.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged_delta is not None:
            raise RuntimeError("already merged")
        delta = self.delta().to(self.base.weight.dtype)
        self.base.weight += delta
        self.merged_delta = delta

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged_delta is None:
            raise RuntimeError("not merged")
        self.base.weight -= self.merged_delta
        self.merged_delta = None


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


class Mixture:
    """The mixture layers installed in one model, addressed as a whole."""

    def __init__(self, model: nn.Module, adapters: Sequence[Adapter]):
        if not adapters:
            raise ValueError("a mixture needs at least one adapter")
        names = [a.name for a in adapters]
        if len(set(names)) != len(names):
            raise ValueError(f"adapter names must be distinct: {names}")
        self.model = model
        self.names = names
        modules = sorted(set().union(*(a.weights for a in adapters)), key=_layer_order)
        self.layers: dict[str, MixtureLinear] = {}
        for mod in modules:
            base = model.get_submodule(mod)
            if not isinstance(base, nn.Linear):
                raise ValueError(f"{mod} is not a linear layer ({type(base).__name__})")
            layer = MixtureLinear(base, names, [a.weights.get(mod) for a in adapters],
                                  [a.scaling for a in adapters])
            _set_module(model, mod, layer)
            self.layers[mod] = layer
        for p in model.parameters():
            p.requires_grad_(False)
        for layer in self.layers.values():
            layer.theta.requires_grad_(True)

    def thetas(self) -> list[nn.Parameter]:
        return [layer.theta for layer in self.layers.values()]

    @property
    def merged(self) -> bool:
        return any(layer.merged_delta is not None for layer in self.layers.values())

    def set_weights(self, weights: Sequence[float]) -> None:
        """The same mixture weights in every layer (theta = log w, so softmax gives w)."""
        if len(weights) != len(self.names) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"need {len(self.names)} non-negative weights, got {weights}")
        total = float(sum(weights))
        theta = [math.log(max(w / total, 1e-12)) for w in weights]
        with torch.no_grad():
            for layer in self.layers.values():
                layer.theta.copy_(torch.tensor(theta))

    def merge(self) -> None:
        for layer in self.layers.values():
            layer.merge()

    def unmerge(self) -> None:
        for layer in self.layers.values():
            layer.unmerge()

    def weights_by_layer(self) -> dict[str, list[float]]:
        return {mod: [round(float(w), 4) for w in layer.weights().detach()]
                for mod, layer in self.layers.items()}

    def weights_by_block(self) -> dict[str, list[float]]:
        """Mean weights per transformer block (a readable summary of the per-layer ones)."""
        groups: dict[str, list[list[float]]] = {}
        for mod, layer in self.layers.items():
            groups.setdefault(_block(mod), []).append(layer.weights().detach().tolist())
        return {b: [round(float(x), 4) for x in np.mean(ws, axis=0)]
                for b, ws in groups.items()}


def _block(module: str) -> str:
    parts = module.split(".")
    for j, p in enumerate(parts[:-1]):
        if p == "layers" and parts[j + 1].isdigit():
            return f"layer {parts[j + 1]}"
    return module


def _layer_order(module: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in module.split("."))


def grid_search(mix: Mixture, grid: Sequence[float], evaluate: Callable[[], float]
                ) -> tuple[float, dict[float, float]]:
    """Weight on the first adapter from `grid` (the rest go to the second), scored by
    `evaluate()` on the merged model; the first best value wins ties."""
    if len(mix.names) != 2:
        raise ValueError("grid search mixes exactly two adapters")
    results: dict[float, float] = {}
    for w in grid:
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"grid weights must be in [0, 1], got {w}")
        mix.set_weights([w, 1.0 - w])
        mix.merge()
        try:
            results[float(w)] = float(evaluate())
        finally:
            mix.unmerge()
    best = max(results, key=lambda w: (results[w], -list(results).index(w)))
    mix.set_weights([best, 1.0 - best])
    return best, results


def answer_entropy(model, prompts: Sequence[Sequence[int]], k: int, eos: int
                   ) -> tuple[torch.Tensor, int]:
    """(sum, count) of the Shannon entropies of the next-token distributions over the
    first k answer tokens of each prompt.

    The answers are the model's own greedy continuations (no labels); they are decoded
    without gradients, then the prompts + first k-1 answer tokens run once with
    gradients, and the entropy at the k answer positions (stopping after an early
    end-of-sequence) is summed. The vocabulary projection runs on those positions only."""
    if k < 1:
        raise ValueError("k must be >= 1")
    device = next(model.parameters()).device
    seqs, spans = [], []
    for p in prompts:
        gen = greedy_decode(model, p, k - 1, eos)
        seqs.append(list(p) + gen)
        spans.append((len(p) - 1, len(gen) + 1))  # rows whose logits predict answer tokens
    n = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), n), dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, :len(s)] = torch.tensor(s)
        mask[row, :len(s)] = 1
    hidden = model.get_decoder()(input_ids=ids.to(device),
                                 attention_mask=mask.to(device)).last_hidden_state
    rows = torch.cat([hidden[row, start:start + count]
                      for row, (start, count) in enumerate(spans)])
    logp = torch.log_softmax(model.get_output_embeddings()(rows).float(), -1)
    ent = -(logp.exp() * logp).sum(-1)
    return ent.sum(), len(ent)


def learn_entropy(mix: Mixture, prompts: Sequence[Sequence[int]], *, k: int, lr: float,
                  epochs: int, batch_size: int, eos: int, seed: int,
                  micro_batch_size: int | None = None) -> list[float]:
    """Adam on theta alone to minimize the mean `answer_entropy` over unlabeled prompts;
    returns the mean entropy per epoch (measured during the epoch)."""
    if mix.merged:
        raise RuntimeError("learn theta on the unmerged mixture")
    if not prompts:
        raise ValueError("entropy learning needs prompts")
    micro = micro_batch_size or batch_size
    opt = torch.optim.Adam(mix.thetas(), lr=lr)
    rng = np.random.default_rng(seed)
    history = []
    for _ in range(epochs):
        order = rng.permutation(len(prompts))
        total, count = 0.0, 0
        for start in range(0, len(order), batch_size):
            batch = [prompts[j] for j in order[start:start + batch_size]]
            opt.zero_grad(set_to_none=True)
            batch_sum, n_batch = 0.0, 0
            for m in range(0, len(batch), micro):  # summed gradients, then the mean
                ent_sum, n = answer_entropy(mix.model, batch[m:m + micro], k, eos)
                ent_sum.backward()
                batch_sum += float(ent_sum.detach())
                n_batch += n
            for p in mix.thetas():
                if p.grad is not None:
                    p.grad /= n_batch
            opt.step()
            total += batch_sum
            count += n_batch
        history.append(total / count)
    return history
