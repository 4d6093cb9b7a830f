"""The paper's "2nd Finetune" row (Table 3): the domain-general LoRA trained further on the
target domain's (few-shot) instruction data. One adapter, no mixture: the alternative to
MoLoRec's plug-in that the paper reports as forgetting the instructed answer format.

It ranks like the other LLM rows (the profile's ranking mode), so its NDCG@1 is comparable
with theirs. Beside it, the forgetting the paper describes is measured directly: on
unlabeled test prompts that list the candidates, the adapter generates greedily, and the
share of answers naming no candidate is reported (describe()["rates"], a column of the
few-shot table); `invalid_rate.before` measures the general LoRA it started from as well.
Nothing is selected on that measurement, and no test label is read.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from bench.api import ScoreRequest, TrainData, Validation
from molorec import ranking as R
from molorec.artifacts import ArtifactBuilder
from molorec.profiles import COMMON, FINETUNE2
from molorec.systems import _LLMSystem
from molorec.template import rank_prompt

RATE_LABEL = "invalid (generate)"
_PARTS = ("backbone", "prompt", "ranking", "selection", "lora", "general")


def _profiles() -> dict[str, dict[str, Any]]:
    return {prof: {**{p: copy.deepcopy(COMMON[prof][p]) for p in _PARTS if p in COMMON[prof]},
                   "finetune2": copy.deepcopy(FINETUNE2[prof])} for prof in COMMON}


class FinetuneBuilder(ArtifactBuilder):
    """The artifacts of the 2nd Finetune row: the shared general LoRA, then a second
    round of training that starts from it."""

    def finetune2(self, data: TrainData, general: Path) -> dict[float, Path]:
        """The general LoRA trained further on the target training split (its kept targets),
        one adapter per learning rate the profile lists."""
        from molorec.selection import as_list

        cfg = self.config["finetune2"]
        key = {**self._target_key(data, "finetune2", cfg), "init": general.name}
        return {lr: self._adapter(data, "lora-finetune2", key, cfg, "finetune2",
                                  self._target_make(data, "finetune2"), lr, init=general)
                for lr in as_list(cfg["train"]["lr"])}


class SecondFinetune(_LLMSystem):
    """General LoRA, then trained further on the target domain; served alone."""

    name: ClassVar[str] = "2nd-Finetune"
    group: ClassVar[str] = "LLM-Based"
    profiles = _profiles()

    def __init__(self, config: dict[str, Any], seed: int, workdir: str | None = None):
        super().__init__(config, seed, workdir)
        self.artifacts = FinetuneBuilder(self.config, seed, self.workdir, self.info)
        self._general: Path | None = None
        self._final: Path | None = None  # the adapter this row serves
        self._checked = False

    @property
    def label(self) -> str:
        return "2nd Finetune"  # the paper's column

    def train_artifacts(self, data: TrainData) -> dict[str, Any]:
        arts = super().train_artifacts(data)
        arts["general"] = self.artifacts.general(data)
        arts["finetune2"] = self.artifacts.finetune2(data, arts["general"])
        return arts

    def fit(self, data: TrainData, valid: Validation) -> None:
        arts = self.train_artifacts(data)
        self._general = arts["general"]
        paths = arts["finetune2"]
        if len(paths) == 1:
            self._final = next(iter(paths.values()))
            self._serve(self._final)
            self._report_valid(valid)
        else:
            self.info["lr"], self.info[self.valid_key] = self._select_adapter(
                paths, self._selection_valid(valid), "valid_by_lr")
            self._final = paths[self.info["lr"]]

    def score(self, requests: Sequence[ScoreRequest]) -> np.ndarray:
        """The first call also measures the invalid-answer rate on its requests (unlabeled)."""
        if not self._checked and requests:
            self._checked = True
            with torch.no_grad():
                self._check_answers(requests)
        return super().score(requests)

    # -- the generate-mode check ---------------------------------------------------------
    def _check_answers(self, requests: Sequence[ScoreRequest]) -> None:
        cfg = self.config["finetune2"].get("invalid_rate") or {}
        n = cfg.get("n_prompts")
        pick = np.random.default_rng([self.seed, 7]).permutation(len(requests))
        chosen = [requests[j] for j in sorted(pick[:n] if n is not None else pick)]
        t0 = time.perf_counter()
        after = self.invalid_rate(chosen, cfg)
        self.info["invalid_check"] = {"prompts": len(chosen), **after}
        self.info["rates"] = {RATE_LABEL: after["invalid_rate"]}
        if cfg.get("before") and self._general is not None:
            self._serve(self._general)
            self.info["invalid_check"]["general_lora"] = self.invalid_rate(chosen, cfg)
            self._serve(self._final)
        self.info.setdefault("seconds", {})["invalid_check"] = round(
            time.perf_counter() - t0, 1)

    def invalid_rate(self, requests: Sequence[ScoreRequest], cfg: dict[str, Any]
                     ) -> dict[str, Any]:
        """Greedy answers of the served adapter to ranking prompts listing the candidates:
        the share naming no candidate, and the first few answers as generated."""
        p = self.prompting
        prompts = []
        for req in requests:
            cands = [self.titles[c] for c in req.candidates]
            reserve = max(len(self.enc.answer(t)) for t in cands)
            prompts.append(rank_prompt(self.enc, [self.titles[i] for i in req.history], cands,
                                       int(cfg.get("max_len", p.max_len)), reserve,
                                       p.max_history, cfg.get("list_candidates", True)).ids)
        gens = self._start_backend().generate(prompts, int(cfg.get("max_new_tokens", 48)),
                                              self.enc.eos)
        texts = [self.enc.tokenizer.decode(g, skip_special_tokens=True) for g in gens]
        parsed = [R.parse_answer(t, [self.titles[c] for c in req.candidates])
                  for t, req in zip(texts, requests, strict=True)]
        return {"invalid_rate": round(float(np.mean([x is None for x in parsed])), 4),
                "examples": [t[:120] for t in texts[:3]]}

    def caption_note(self) -> list[str]:
        """The LLM rows' note, plus what the rate column is."""
        cfg = self.config["finetune2"].get("invalid_rate") or {}
        n = cfg.get("n_prompts")
        how = f"{n} seeded" if n is not None else "all"
        return [super().caption_note(),
                f"2nd Finetune {RATE_LABEL}: share of greedy answers naming no candidate, on "
                f"{how} unlabeled test prompts that list the candidates (the paper's "
                "catastrophic forgetting; not compared)"]
