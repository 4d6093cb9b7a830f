"""RecLoRA's personalized LoRA: a bank of N meta-LoRAs per adapted layer, mixed per row.

Each adapted linear layer computes  W x + s * sum_k g_k B_k A_k x  where g (one row of
N gates per batch row) is softmax(router(h_u) / T) for the row's user u. The N LoRAs are
stored stacked, A (N r x in) and B (out x N r), and the gate scales each LoRA's r
features in the rank space, so a batch of users with different gates costs one matmul
pair per layer, as one LoRA of rank N r would. Because the gate differs per user, the
bank cannot be merged into W nor served as one adapter (vLLM): every forward runs it.
With N = 1 the gate is 1 and the layer is peft's LoRA, B(A(dropout(x))) * s, exactly.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F


class GateState:
    """The gates of the batch now running (batch x N), shared by every layer of a bank."""

    gates: torch.Tensor | None = None


class GatedLoRALinear(nn.Module):
    """A frozen linear layer plus N LoRAs weighted by the per-row gates of `state`."""

    def __init__(self, base: nn.Linear, n: int, r: int, alpha: float, dropout: float,
                 state: GateState):
        super().__init__()
        self.base, self.n, self.r, self.scaling = base, n, r, alpha / r
        dev = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(n * r, base.in_features, device=dev))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, n * r, device=dev))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.state = state
        self.reset()

    @torch.no_grad()
    def reset(self) -> None:
        """peft's initialization for each LoRA: A Kaiming-uniform, B zero."""
        for k in range(self.n):
            nn.init.kaiming_uniform_(self.lora_A[k * self.r:(k + 1) * self.r], a=math.sqrt(5))
        self.lora_B.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        g = self.state.gates
        if g is None:
            raise RuntimeError("a gated LoRA layer ran without gates: wrap the forward in "
                               "GatedBank.gated(gates)")
        if g.shape != (x.shape[0], self.n):
            raise ValueError(f"gates of shape {tuple(g.shape)} for a batch of {x.shape[0]} "
                             f"rows and {self.n} LoRAs")
        h = F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A)  # (b, ..., n r)
        h = h * g.repeat_interleave(self.r, dim=-1).view(g.shape[0], *[1] * (h.dim() - 2), -1)
        return y + (F.linear(h, self.lora_B) * self.scaling).to(y.dtype)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


class GatedBank:
    """N meta-LoRAs on the `target_modules` linears of a model (every other weight
    frozen); `gated(g)` sets the gates of the batch every layer reads."""

    def __init__(self, model: nn.Module, n: int, r: int, alpha: float, dropout: float = 0.0,
                 target_modules: Sequence[str] = ("q_proj", "v_proj")):
        if n < 1 or r < 1:
            raise ValueError(f"a gated bank needs n >= 1 LoRAs of rank r >= 1 (n={n}, r={r})")
        self.model, self.n, self.state = model, n, GateState()
        targets = set(target_modules)
        found = [(name, mod) for name, mod in model.named_modules()
                 if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in targets]
        if not found:
            raise ValueError(f"no linear layer named {sorted(targets)} in the model")
        model.requires_grad_(False)
        self.layers: dict[str, GatedLoRALinear] = {}
        for name, mod in found:
            layer = GatedLoRALinear(mod, n, r, alpha, dropout, self.state).train(mod.training)
            _set_module(model, name, layer)
            self.layers[name] = layer

    def parameters(self) -> list[nn.Parameter]:
        return [p for layer in self.layers.values() for p in (layer.lora_A, layer.lora_B)]

    @contextlib.contextmanager
    def gated(self, gates: torch.Tensor) -> Iterator[None]:
        """Within the block, batch row b of every forward uses gates[b] (N weights)."""
        self.state.gates = gates
        try:
            yield
        finally:
            self.state.gates = None

    def reset(self) -> None:
        for layer in self.layers.values():
            layer.reset()

    def tensors(self) -> dict[str, torch.Tensor]:
        """A copy of every LoRA's weights, keyed `<module>.lora_A` / `.lora_B` (stacked)."""
        return {f"{m}.lora_{ab}": getattr(layer, f"lora_{ab}").detach().cpu().clone()
                for m, layer in self.layers.items() for ab in ("A", "B")}

    @torch.no_grad()
    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        for m, layer in self.layers.items():
            for ab in ("A", "B"):
                getattr(layer, f"lora_{ab}").copy_(tensors[f"{m}.lora_{ab}"])

    def remove(self) -> None:
        """Put the plain linear layers back."""
        for name, layer in self.layers.items():
            _set_module(self.model, name, layer.base)
        self.layers = {}


class Router(nn.Module):
    """Gates from a user representation: softmax(MLP(h) / T) over the N LoRAs (RecLoRA's
    router: LayerNorm, Linear to `hidden`, ReLU, Dropout, Linear to N)."""

    def __init__(self, dim: int, n: int, hidden: int = 60, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.ReLU(),
                                 nn.Dropout(dropout), nn.Linear(hidden, n))

    def forward(self, h: torch.Tensor, temperature: float) -> torch.Tensor:
        return torch.softmax(self.net(h.float()) / temperature, dim=-1)
