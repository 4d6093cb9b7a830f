"""Training a named LoRA adapter with peft on a frozen backbone, cached in the workdir
as a PEFT directory (molorec.adapters), keyed on everything that determines it."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from molorec.adapters import Adapter, extract, load_into, load_peft, save_peft
from molorec.backbone import Backbone
from molorec.cache import artifact_path, cached_dir, is_built
from molorec.instructions import Example, kept, short_of_negatives
from molorec.lm import resolve_compute
from molorec.train_loop import TrainSettings, seed_everything, train


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


def train_adapter(backbone: Backbone, examples: Sequence[Example], lora: LoraSettings,
                  settings: TrainSettings, seed: int, name: str,
                  init: Adapter | None = None) -> tuple[Adapter, list[float]]:
    """Fit one LoRA adapter on `examples` (loss on answer tokens), backbone frozen;
    starting from `init`'s weights when given (a second round of fine-tuning)."""
    from peft import LoraConfig, get_peft_model

    model, tok = backbone.load()
    seed_everything(seed)
    target = lora.target_modules if isinstance(lora.target_modules, str) \
        else list(lora.target_modules)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=target, bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config, adapter_name=name)
    if init is not None:
        load_into(peft_model, name, init)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    losses = train(peft_model, examples, settings, seed, pad)
    return extract(peft_model, name), losses


def ensure_adapter(workdir: str | Path, kind: str, key: dict[str, Any], backbone: Backbone,
                   make_examples: Callable[[], list[Example]], lora: LoraSettings,
                   settings: TrainSettings, seed: int, name: str, init: Path | None = None
                   ) -> Path:
    """The cached adapter for `key`, trained (once) if missing. `key` must hold everything
    the examples depend on; the backbone, LoRA and training settings are added here.
    `init`: the adapter training starts from (its identity must be in `key`)."""
    from accelerate import PartialState

    state = PartialState()
    settings = replace(settings, compute=resolve_compute(backbone.compute, state.device))
    full_key = {**key, "backbone": backbone.key, "lora": asdict(lora),
                "train": asdict(settings), "seed": seed, "adapter": name}
    path = artifact_path(workdir, kind, full_key)
    if is_built(path):
        return path

    def fit() -> tuple[Adapter, dict[str, Any]]:
        t0 = time.perf_counter()
        full = make_examples()
        examples = kept(full)
        if full and not examples:
            raise ValueError(f"the few-shot share kept none of the {len(full)} training "
                             f"examples of the {name} adapter: use a larger share")
        start = {} if init is None else {"init": load_peft(init)}
        adapter, losses = train_adapter(backbone, examples, lora, settings, seed, name, **start)
        return adapter, {"losses": losses, "examples": len(examples),
                         "examples_full_setting": len(full),
                         "examples_short_of_negatives": short_of_negatives(examples),
                         "seconds": time.perf_counter() - t0,
                         "processes": state.num_processes, "compute": settings.compute}

    if state.num_processes == 1:  # trained under the store's per-key lock: once per key,
        # however many workers ask for it at the same time
        def build(out: Path) -> None:
            adapter, meta = fit()
            save_peft(adapter, out, backbone.path, meta)

        return cached_dir(workdir, kind, full_key, build)
    # every process trains (data parallel); only the main one writes the artifact
    adapter, meta = fit()
    if state.is_main_process:
        cached_dir(workdir, kind, full_key,
                   lambda out: save_peft(adapter, out, backbone.path, meta))
    state.wait_for_everyone()
    return path
