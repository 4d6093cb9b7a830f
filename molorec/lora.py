"""Training a named LoRA adapter with peft on a frozen backbone, and its on-disk form.

An adapter is stored as plain tensors, `<module>.lora_A` (r x in) and `<module>.lora_B`
(out x r) per adapted linear layer, in safetensors, plus its rank and alpha; the mixture
reads them back without peft, and any number of adapters can sit on one backbone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from molorec.backbone import Backbone
from molorec.cache import artifact_path, cached_dir, is_built
from molorec.instructions import Example
from molorec.train_loop import TrainSettings, seed_everything, train

PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> LoraSettings:
        tm = cfg.get("target_modules", "all-linear")
        return cls(int(cfg.get("r", 16)), float(cfg.get("alpha", 32.0)),
                   float(cfg.get("dropout", 0.05)), tm if isinstance(tm, str) else tuple(tm))

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


@dataclass
class Adapter:
    """Low-rank updates per module (names as in the bare backbone): delta W = B A * scaling."""

    name: str
    scaling: float
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module -> (A, B)


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


def save_adapter(adapter: Adapter, out: Path, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for mod, (a, b) in adapter.weights.items():
        tensors[f"{mod}.lora_A"] = a.contiguous()
        tensors[f"{mod}.lora_B"] = b.contiguous()
    save_file(tensors, str(out / "adapter.safetensors"))
    (out / "adapter.json").write_text(json.dumps(
        {"name": adapter.name, "scaling": adapter.scaling, **meta}, indent=1, default=str))


def load_adapter(path: Path, name: str | None = None) -> Adapter:
    """Read an adapter this code saved (safetensors holds tensors only: no pickle)."""
    from safetensors.torch import load_file

    meta = json.loads((Path(path) / "adapter.json").read_text())
    tensors = load_file(str(Path(path) / "adapter.safetensors"))
    weights = {}
    for key in tensors:
        if key.endswith(".lora_A"):
            mod = key[:-len(".lora_A")]
            weights[mod] = (tensors[key], tensors[f"{mod}.lora_B"])
    return Adapter(name or meta["name"], float(meta["scaling"]), weights)


def adapter_meta(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / "adapter.json").read_text())


def train_adapter(backbone: Backbone, examples: Sequence[Example], lora: LoraSettings,
                  settings: TrainSettings, seed: int, name: str) -> tuple[Adapter, list[float]]:
    """Fit one LoRA adapter on `examples` (loss on answer tokens), backbone frozen."""
    from peft import LoraConfig, get_peft_model

    model, tok = backbone.load()
    seed_everything(seed)
    target = lora.target_modules if isinstance(lora.target_modules, str) \
        else list(lora.target_modules)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=target, bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config, adapter_name=name)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    losses = train(peft_model, examples, settings, seed, pad)
    return extract(peft_model, name), losses


def ensure_adapter(workdir: str | Path, kind: str, key: dict[str, Any], backbone: Backbone,
                   make_examples: Callable[[], list[Example]], lora: LoraSettings,
                   settings: TrainSettings, seed: int, name: str) -> Path:
    """The cached adapter for `key`, trained (once) if missing. `key` must hold everything
    the examples depend on; the backbone, LoRA and training settings are added here."""
    full_key = {**key, "backbone": backbone.key, "lora": asdict(lora),
                "train": asdict(settings), "seed": seed, "adapter": name}

    from accelerate import PartialState

    state = PartialState()
    path = artifact_path(workdir, kind, full_key)
    if is_built(path):
        return path
    t0 = time.perf_counter()
    # every process trains (data parallel); only the main one writes the artifact
    examples = make_examples()
    adapter, losses = train_adapter(backbone, examples, lora, settings, seed, name)
    meta = {"losses": losses, "examples": len(examples), "seconds": time.perf_counter() - t0,
            "processes": state.num_processes}
    if state.is_main_process:
        cached_dir(workdir, kind, full_key, lambda out: save_adapter(adapter, out, meta))
    state.wait_for_everyone()
    return path
