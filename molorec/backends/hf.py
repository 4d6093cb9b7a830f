"""The transformers backend: the reference implementation, and the one adapters train in.

Adapters are merged into the weights (one plain model at inference); the original
weights of every touched layer are kept on the CPU so that switching adapters restores
them exactly rather than subtracting (which would drift by rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from molorec import ranking as R
from molorec.adapters import load_peft
from molorec.backbone import Backbone
from molorec.backends.base import AnswerRequest, ChoiceRequest, LLMBackend
from molorec.lm import autocast, device_of, resolve_compute


def _progress(items: Sequence, desc: str):
    """A per-user progress bar where a batch takes long enough to want one."""
    return tqdm(items, desc=desc, unit="user", leave=False, disable=len(items) < 32)


class HFBackend(LLMBackend):
    name = "hf"

    def __init__(self, backbone: Backbone, sharing: str = "packed", compute: str | None = None,
                 device: str | None = None):
        if sharing not in R.KV_SHARING:
            raise ValueError(f"sharing must be one of {R.KV_SHARING}, got {sharing!r}")
        self.backbone = backbone
        self.sharing = sharing
        self.model, self.tokenizer = backbone.load(device)
        self.device = device_of(self.model)
        self.compute = resolve_compute(compute or backbone.compute, self.device)
        self._pristine: dict[str, torch.Tensor] = {}
        self.adapter: str | None = None

    # -- adapters ---------------------------------------------------------------------
    def _restore(self) -> None:
        with torch.no_grad():
            for mod, w in self._pristine.items():
                self.model.get_submodule(mod).weight.copy_(w)
        self.adapter = None

    def set_adapter(self, path: Path | None) -> None:
        self._restore()
        if path is None:
            return
        adapter = load_peft(path)
        with torch.no_grad():
            for mod in adapter.weights:
                weight = self.model.get_submodule(mod).weight
                if mod not in self._pristine:
                    self._pristine[mod] = weight.detach().to("cpu", copy=True)
                weight += adapter.delta(mod).to(weight.device, weight.dtype)
        self.adapter = str(path)

    def trainer_model(self) -> torch.nn.Module:
        """The bare torch model (adapter removed), e.g. to install a mixture on."""
        self._restore()
        return self.model

    # -- inference --------------------------------------------------------------------
    def answer_logprobs(self, requests: Sequence[AnswerRequest],
                        vocab: torch.Tensor | None = None) -> list[np.ndarray]:
        with autocast(self.compute, self.device):
            return [R.answer_logprobs(self.model, r.prompt, r.answers, self.sharing, vocab)[0]
                    for r in _progress(requests, "LLM scoring")]

    def yes_no(self, requests: Sequence[ChoiceRequest], yes: int, no: int
               ) -> list[np.ndarray]:
        with autocast(self.compute, self.device):
            return [R.yes_no_scores(self.model, r.prefix, r.suffixes, yes, no)
                    for r in _progress(requests, "LLM yes/no")]

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos: int
                 ) -> list[list[int]]:
        with autocast(self.compute, self.device):
            return [R.greedy_decode(self.model, p, max_new_tokens, eos)
                    for p in _progress(prompts, "LLM generating")]

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "compute": self.compute, "device": str(self.device),
                "sharing": self.sharing}

    def close(self) -> None:
        self.model = None
        self._pristine = {}
