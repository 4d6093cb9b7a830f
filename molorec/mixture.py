"""Mixture of LoRA: several named adapters on one frozen backbone, mixed per layer.

Each adapted linear layer computes  W x + sum_i w_i * B_i A_i x * (alpha_i / r_i)  with
w = softmax(theta) for that layer (theta is the only trainable tensor). `merge()` folds
the mixture into W, so inference then costs exactly one plain model; `unmerge()` takes
it back out; `as_adapter()` writes the current mixture as one exact LoRA, which is how
the rows serve it. Theta is learned here by entropy-guided learning on unlabeled prompts
(the paper's test-time objective: mean entropy of the next-token distribution over the
first k answer tokens, gradients into theta alone); fixed and grid weights are set by
the rows directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from molorec.adapters import Adapter, concat
from molorec.lm import autocast, device_of, logits_at, right_pad
from molorec.ranking import greedy_decode
from molorec.selection import by_block


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
        self.adapters = list(adapters)
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

    def as_adapter(self, name: str = "mixture") -> Adapter:
        """The current per-layer mixture as one exact LoRA (see adapters.concat)."""
        weights = {mod: layer.weights().detach().tolist() for mod, layer in self.layers.items()}
        return concat(self.adapters, weights, name)

    def remove(self) -> None:
        """Put the plain linear layers back (unmerging first): the model is as before."""
        if self.merged:
            self.unmerge()
        for mod, layer in self.layers.items():
            _set_module(self.model, mod, layer.base)
        self.layers = {}

    def weights_by_layer(self) -> dict[str, list[float]]:
        return {mod: [round(float(w), 4) for w in layer.weights().detach()]
                for mod, layer in self.layers.items()}

    def weights_by_block(self) -> dict[str, list[float]]:
        """Mean weights per transformer block (a readable summary of the per-layer ones)."""
        return by_block({mod: layer.weights().detach().tolist()
                         for mod, layer in self.layers.items()})


def _layer_order(module: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in module.split("."))


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
    device = device_of(model)
    seqs, rows = [], []
    for p in prompts:
        gen = greedy_decode(model, p, k - 1, eos)
        seqs.append(list(p) + gen)
        rows.append((len(p) - 1, len(gen) + 1))  # positions whose logits predict answers
    ids, mask = right_pad(seqs, 0, device)
    width = ids.shape[1]
    keep = torch.tensor([row * width + start + j for row, (start, count) in enumerate(rows)
                         for j in range(count)], device=device)
    logits, _ = logits_at(model, keep, None, input_ids=ids, attention_mask=mask)
    logp = torch.log_softmax(logits.float(), -1)
    ent = -(logp.exp() * logp).sum(-1)
    return ent.sum(), len(ent)


def mean_entropy(mix: Mixture, prompts: Sequence[Sequence[int]], *, k: int, eos: int,
                 batch_size: int, compute: str = "float32") -> float:
    """The mean `answer_entropy` over `prompts` at the current theta, without gradients."""
    device = device_of(mix.model)
    total, count = 0.0, 0
    with torch.no_grad():
        for m in range(0, len(prompts), batch_size):
            with autocast(compute, device):
                ent_sum, n = answer_entropy(mix.model, prompts[m:m + batch_size], k, eos)
            total += float(ent_sum)
            count += n
    return total / count


def learn_entropy(mix: Mixture, prompts: Sequence[Sequence[int]], *, k: int, lr: float,
                  epochs: int, batch_size: int, eos: int, seed: int,
                  micro_batch_size: int | None = None, stop_on_rise: bool = False,
                  compute: str = "float32") -> list[float]:
    """Adam on theta alone to minimize the mean `answer_entropy` over unlabeled prompts;
    returns the mean entropy per epoch (measured during the epoch, from the theta the
    epoch starts with).

    `stop_on_rise` is a label-free stopping rule: learning stops at the first epoch whose
    entropy is higher than the one before; then the theta after the last step is scored
    too, in one extra pass (appended to the returned list), and theta goes back to the
    lowest-entropy one of the epochs' starting points and that last one (a too-large step
    can overshoot and raise the entropy; a last step that helped is kept)."""
    if mix.merged:
        raise RuntimeError("learn theta on the unmerged mixture")
    if not prompts:
        raise ValueError("entropy learning needs prompts")
    micro = micro_batch_size or batch_size
    opt = torch.optim.Adam(mix.thetas(), lr=lr)
    rng = np.random.default_rng(seed)
    history: list[float] = []
    starts: list[list[torch.Tensor]] = []
    device = device_of(mix.model)
    for _ in range(epochs):
        starts.append([t.detach().clone() for t in mix.thetas()])
        order = rng.permutation(len(prompts))
        total, count = 0.0, 0
        for start in range(0, len(order), batch_size):
            batch = [prompts[j] for j in order[start:start + batch_size]]
            opt.zero_grad(set_to_none=True)
            batch_sum, n_batch = 0.0, 0
            for m in range(0, len(batch), micro):  # summed gradients, then the mean
                with autocast(compute, device):
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
        if stop_on_rise and len(history) > 1 and history[-1] > history[-2]:
            break
    if stop_on_rise:
        history.append(mean_entropy(mix, prompts, k=k, eos=eos, batch_size=micro,
                                    compute=compute))
        best = int(np.argmin(history))
        if best < len(starts):  # else the last step's theta, already in place
            with torch.no_grad():
                for t, saved in zip(mix.thetas(), starts[best], strict=True):
                    t.copy_(saved)
    return history
