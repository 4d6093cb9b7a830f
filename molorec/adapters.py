"""LoRA adapters in memory and on disk, in the standard PEFT directory layout.

An adapter is, per adapted linear layer, the pair (A: r x in, B: out x r) with
delta W = scaling * B A. On disk it is what `PeftModel.save_pretrained` writes
(`adapter_config.json` + `adapter_model.safetensors` with keys
`base_model.model.<module>.lora_A.weight`), so peft, vLLM (`LoRARequest`) and anyone
else load it as it is; `molorec.json` beside them holds our training record.

MoLoRec's mixture is itself one LoRA: per layer, sum_i w_i s_i B_i A_i equals B A with
A = [A_1; A_2] and B = [w_1 s_1 B_1, w_2 s_2 B_2] (rank r_1 + r_2, scaling 1).
`concat` builds it, so a mixed model is served exactly like a single adapter, with no
dense merge and no extra cost over one LoRA of that rank.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

PEFT_PREFIX = "base_model.model."
CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
RECORD = "molorec.json"


@dataclass
class Adapter:
    """Low-rank updates per module (names as in the bare backbone): delta W = s B A."""

    name: str
    scaling: float
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module -> (A, B)

    @property
    def rank(self) -> int:
        return max(a.shape[0] for a, _ in self.weights.values())

    def delta(self, module: str) -> torch.Tensor:
        """scaling * B A in float32 (out x in)."""
        a, b = self.weights[module]
        return self.scaling * (b.float() @ a.float())


def extract(peft_model, adapter_name: str) -> Adapter:
    """Copy one adapter's A/B matrices out of a peft model."""
    from peft.tuners.lora import LoraLayer

    weights, scaling = {}, None
    for name, mod in peft_model.named_modules():
        if isinstance(mod, LoraLayer) and adapter_name in mod.lora_A:
            base = name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name
            a = mod.lora_A[adapter_name].weight.detach().float().cpu().clone()
            b = mod.lora_B[adapter_name].weight.detach().float().cpu().clone()
            weights[base] = (a, b)
            scaling = float(mod.scaling[adapter_name])
    if not weights:
        raise ValueError(f"no LoRA layers named {adapter_name!r} in the model")
    return Adapter(adapter_name, scaling, weights)


def load_into(peft_model, adapter_name: str, adapter: Adapter) -> None:
    """Set a peft model's LoRA `adapter_name` to `adapter`'s A/B matrices (the inverse of
    `extract`): training then continues from that adapter."""
    from peft.tuners.lora import LoraLayer

    seen = set()
    for name, mod in peft_model.named_modules():
        if isinstance(mod, LoraLayer) and adapter_name in mod.lora_A:
            base = name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name
            if base not in adapter.weights:
                raise ValueError(f"adapter {adapter.name!r} has no weights for {base}")
            if abs(float(mod.scaling[adapter_name]) - adapter.scaling) > 1e-9:
                raise ValueError(f"{base}: scaling {mod.scaling[adapter_name]} differs from "
                                 f"adapter {adapter.name!r}'s {adapter.scaling}")
            a, b = adapter.weights[base]
            with torch.no_grad():
                mod.lora_A[adapter_name].weight.copy_(a)
                mod.lora_B[adapter_name].weight.copy_(b)
            seen.add(base)
    missing = sorted(set(adapter.weights) - seen)
    if missing:
        raise ValueError(f"the model has no LoRA layer for {missing[0]} (and "
                         f"{len(missing) - 1} more) of adapter {adapter.name!r}")


def save_peft(adapter: Adapter, out: Path, base_model: str,
              record: Mapping[str, Any] | None = None) -> Path:
    """Write `adapter` as a PEFT LoRA directory (lora_alpha = scaling * r)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ranks = {mod: a.shape[0] for mod, (a, _) in adapter.weights.items()}
    r = max(ranks.values())
    tensors = {}
    for mod, (a, b) in adapter.weights.items():
        tensors[f"{PEFT_PREFIX}{mod}.lora_A.weight"] = a.float().contiguous()
        tensors[f"{PEFT_PREFIX}{mod}.lora_B.weight"] = b.float().contiguous()
    save_file(tensors, str(out / WEIGHTS))
    rank_pattern = {mod: n for mod, n in ranks.items() if n != r}
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": r, "lora_alpha": adapter.scaling * r,
        "rank_pattern": rank_pattern,
        "alpha_pattern": {mod: adapter.scaling * n for mod, n in rank_pattern.items()},
        "target_modules": sorted({mod.rsplit(".", 1)[-1] for mod in adapter.weights}),
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "modules_to_save": None, "layers_to_transform": None, "inference_mode": True,
    }
    (out / CONFIG).write_text(json.dumps(config, indent=1, sort_keys=True))
    (out / RECORD).write_text(json.dumps({"name": adapter.name, **(record or {})}, indent=1,
                                         default=str))
    return out


def load_peft(path: Path, name: str | None = None) -> Adapter:
    """Read a PEFT LoRA directory (safetensors holds tensors only: no pickle)."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        config = json.loads((path / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path / CONFIG}: not a readable PEFT adapter config ({e})") from None
    if config.get("peft_type") != "LORA" or config.get("use_rslora"):
        raise ValueError(f"{path}: only plain LoRA adapters are supported")
    tensors = load_file(str(path / WEIGHTS))
    weights = {}
    for key, a in tensors.items():
        if key.endswith(".lora_A.weight"):
            mod = key[:-len(".lora_A.weight")]
            b = tensors[f"{mod}.lora_B.weight"]
            mod = mod[len(PEFT_PREFIX):] if mod.startswith(PEFT_PREFIX) else mod
            weights[mod] = (a, b)
    r, alpha = config["r"], config["lora_alpha"]
    for mod, (a, _) in weights.items():  # one scaling for all: ranks may differ, ratio not
        n = a.shape[0]
        if config.get("alpha_pattern", {}).get(mod, alpha * n / r) / n != alpha / r:
            raise ValueError(f"{path}: per-module scalings differ; not supported")
    if name is None:
        try:
            name = json.loads((path / RECORD).read_text())["name"]
        except (OSError, ValueError, KeyError):
            name = path.name
    return Adapter(name, alpha / r, weights)


def record(path: Path) -> dict[str, Any]:
    """The training record saved beside an adapter."""
    return json.loads((Path(path) / RECORD).read_text())


def concat(adapters: Sequence[Adapter], weights: Mapping[str, Sequence[float]],
           name: str = "mixture") -> Adapter:
    """The exact mixture sum_i weights[module][i] * delta_i as one LoRA (scaling 1).
    A module that some adapter lacks gets zero rows/columns for it."""
    modules = sorted(set().union(*(a.weights for a in adapters)))
    out = {}
    for mod in modules:
        w = weights[mod]
        if len(w) != len(adapters):
            raise ValueError(f"{mod}: {len(w)} weights for {len(adapters)} adapters")
        ref = next(a.weights[mod] for a in adapters if mod in a.weights)
        a_parts, b_parts = [], []
        for adapter, wi in zip(adapters, w, strict=True):
            if mod in adapter.weights:
                a, b = adapter.weights[mod]
            else:
                n = adapter.rank
                a = torch.zeros(n, ref[0].shape[1])
                b = torch.zeros(ref[1].shape[0], n)
            a_parts.append(a.float())
            b_parts.append(b.float() * (float(wi) * adapter.scaling))
        out[mod] = (torch.cat(a_parts, 0), torch.cat(b_parts, 1))
    return Adapter(name, 1.0, out)


def uniform_weights(adapters: Sequence[Adapter], w: Sequence[float]) -> dict[str, list[float]]:
    """The same mixture weights for every module any adapter has."""
    modules = set().union(*(a.weights for a in adapters))
    return {mod: list(w) for mod in modules}
