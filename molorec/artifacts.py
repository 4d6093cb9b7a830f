"""What the LLM rows train and share, and on what each artifact is keyed.

All artifacts live in the run's workdir cache (molorec.cache): the backbone (built or
converted once), the domain-general LoRA (keyed on the backbone, the general corpus and
its settings only, so every target domain reuses it), the domain-specific LoRA (keyed
on the target training split; shared by MoLoRec-S and MoLoRec) and TALLRec's LoRA.
A key holds everything its artifact depends on, so equal keys mean equal artifacts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.api import TrainData
from molorec import adapters as A
from molorec import backbone as B
from molorec import lora as L
from molorec.cache import cached_dir, stable_hash
from molorec.instructions import (
    Example,
    rank_examples,
    sequences_digest,
    share_key,
    yes_no_examples,
)
from molorec.selection import as_list
from molorec.template import Encoder, template_hash
from molorec.train_loop import TrainSettings


@dataclass(frozen=True)
class Prompting:
    """How prompts are built (prompt settings of a profile)."""

    max_len: int = 1024
    max_history: int | None = None
    list_candidates: bool = True

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Prompting:
        return cls(int(cfg.get("max_len", 1024)), cfg.get("max_history"),
                   bool(cfg.get("list_candidates", True)))

    def key(self) -> dict[str, Any]:
        out = {"template": template_hash(), "max_len": self.max_len,
               "max_history": self.max_history}
        if not self.list_candidates:  # absent when listing: earlier keys stay valid
            out["list_candidates"] = False
        return out


def capped(examples: list[Example], cap: int | None, seed: int) -> list[Example]:
    """A seeded sample of at most `cap` examples, in their original order (a CPU budget
    on training; None keeps all)."""
    if cap is None or len(examples) <= cap:
        return examples
    keep = sorted(np.random.default_rng(seed).permutation(len(examples))[:cap])
    return [examples[j] for j in keep]


class ArtifactBuilder:
    """Builds, or finds in the cache, what one system needs; records what it did in
    `info` (losses, example counts, seconds) for the cell's describe()."""

    def __init__(self, config: dict[str, Any], seed: int, workdir: str | Path,
                 info: dict[str, Any]):
        self.config, self.seed, self.workdir, self.info = config, seed, Path(workdir), info
        self.prompting = Prompting.from_config(config.get("prompt", {}))
        self.lora = L.LoraSettings.from_config(config.get("lora", {}))
        self.backbone: B.Backbone | None = None
        self.enc: Encoder | None = None

    def ensure_backbone(self, data: TrainData) -> B.Backbone:
        if self.backbone is None:
            t0 = time.perf_counter()
            self.backbone = B.ensure_backbone(self.config["backbone"], data.general,
                                              data.titles, self.workdir)
            self.enc = Encoder(self.backbone.tokenizer(), chat=self.backbone.chat)
            self.info["backbone"] = self.backbone.label
            if sha := self.config["backbone"].get("sha256"):  # pinned (molorec.backbone.pin)
                self.info["backbone_sha256"] = sha
            self._seconds("backbone", t0)
        return self.backbone

    def _seconds(self, what: str, t0: float) -> None:
        self.info.setdefault("seconds", {})[what] = round(time.perf_counter() - t0, 1)

    # -- adapters ---------------------------------------------------------------------
    def general(self, data: TrainData) -> Path:
        """The domain-general module: depends on the backbone and general corpus only."""
        cfg = self.config["general"]
        key = {"what": "general", **self.prompting.key(),
               "corpus": sequences_digest(data.general, data.titles),
               "max_targets_per_user": cfg.get("max_targets_per_user")}
        return self._adapter(data, "lora-general", key, cfg, "general",
                             lambda enc: self._rank_examples(data, data.general, cfg, enc))

    def specific(self, data: TrainData) -> dict[float, Path]:
        """The domain-specific module, one per learning rate the profile lists."""
        cfg = self.config["specific"]
        key = self._target_key(data, "specific", cfg)
        return {lr: self._adapter(data, "lora-specific", key, cfg, "specific",
                                  self._target_make(data, "specific"), lr)
                for lr in as_list(cfg["train"]["lr"])}

    def tallrec(self, data: TrainData) -> dict[float, Path]:
        cfg = self.config["tallrec"]
        key = self._target_key(data, "tallrec", cfg)
        return {lr: self._adapter(data, "lora-tallrec", key, cfg, "tallrec",
                                  self._target_make(data, "tallrec"), lr)
                for lr in as_list(cfg["train"]["lr"])}

    def target_examples(self, data: TrainData, part: str, enc: Encoder) -> list[Example]:
        """What the `part` adapter ("specific", "tallrec", "finetune2") is built from on
        the target domain: the full setting's examples after the caps, each marked `kept`
        as the few-shot share says (training uses the kept ones, molorec.lora)."""
        cfg = self.config[part]
        return capped(self._target_make(data, part)(enc), cfg.get("max_examples"), self.seed)

    def _target_make(self, data: TrainData, part: str) -> Callable[[Encoder], list[Example]]:
        cfg, p = self.config[part], self.prompting
        if part == "tallrec":
            return lambda enc: yes_no_examples(
                data.train, data.titles, enc, seed=self.seed, max_len=p.max_len,
                max_history=p.max_history, max_targets_per_user=cfg.get("max_targets_per_user"),
                negatives_per_target=cfg.get("negatives_per_target", 1))
        return lambda enc: self._rank_examples(data, data.train, cfg, enc)

    def _rank_examples(self, data: TrainData, sequences, cfg: dict, enc: Encoder
                       ) -> list[Example]:
        p = self.prompting
        return rank_examples(sequences, data.titles, enc, seed=self.seed, max_len=p.max_len,
                             max_history=p.max_history,
                             max_targets_per_user=cfg.get("max_targets_per_user"),
                             list_candidates=p.list_candidates)

    def _target_key(self, data: TrainData, what: str, cfg: dict) -> dict[str, Any]:
        return {"what": what, **self.prompting.key(), "dataset": data.dataset,
                "setting": data.setting, "train": sequences_digest(data.train, data.titles),
                "max_targets_per_user": cfg.get("max_targets_per_user"),
                "negatives_per_target": cfg.get("negatives_per_target"),
                **share_key(data.train)}

    def _adapter(self, data: TrainData, kind: str, key: dict, cfg: dict, name: str,
                 make: Callable[[Encoder], list[Example]], lr: float | None = None,
                 init: Path | None = None) -> Path:
        bb = self.ensure_backbone(data)
        t0 = time.perf_counter()
        train_cfg = dict(cfg["train"])
        if lr is not None:
            train_cfg["lr"] = lr
        settings = TrainSettings.from_config(train_cfg)
        enc = self.enc
        cap = cfg.get("max_examples")
        if cap is not None:
            key = {**key, "max_examples": int(cap)}
        path = L.ensure_adapter(self.workdir, kind, key, bb,
                                lambda: capped(make(enc), cap, self.seed), self.lora,
                                settings, self.seed, name, init)
        meta = A.record(path)
        label = f"{name}@lr={settings.lr:g}"
        self.info.setdefault("adapters", {})[label] = {
            "losses": [round(x, 4) for x in meta["losses"]], "examples": meta["examples"],
            # what the same adapter trains on in the full setting (few-shot: the share's base)
            "examples_full_setting": meta.get("examples_full_setting", meta["examples"]),
            "examples_short_of_negatives": meta.get("examples_short_of_negatives", 0),
            "train_seconds": round(meta["seconds"], 1), "compute": meta.get("compute")}
        self._seconds(f"adapter {label}", t0)
        return path

    def mixture(self, general: Path, specific: Path, weights: dict[str, list[float]]) -> Path:
        """The exact [general, specific] mixture with per-module `weights`, written once
        as one PEFT adapter (molorec.adapters.concat)."""
        parts = [A.load_peft(general), A.load_peft(specific)]
        key = {"what": "mixture", "general": str(general), "specific": str(specific),
               "weights": {m: [float(x) for x in w] for m, w in sorted(weights.items())}}
        return cached_dir(self.workdir, "lora-mixture", key, lambda out: A.save_peft(
            A.concat(parts, weights, "molorec"), out, self.backbone.path,
            {"mixture_of": ["general", "specific"], "key": stable_hash(key)}))
