"""The interface between the LLM rows and whatever runs the model.

The rows (molorec.systems) build token ids and decide what to ask; a backend only runs
a frozen backbone, optionally with one LoRA adapter (a PEFT directory; MoLoRec's
mixture is served as one exact concatenated adapter), over batches of requests.

Checklist for a new backend (what a subclass overrides):
- `name`: the registry name (molorec.backends.BACKENDS).
- `__init__(backbone, sharing, compute)`: load the backbone; fail with a clear message
  if the runtime is missing or cannot run this model.
- `set_adapter(path)`: serve the PEFT adapter at `path` for every later call (None: the
  bare backbone). Must be exact: the same outputs as the adapter merged into W.
- `answer_logprobs(requests, vocab)`: per request, the summed log-probability of each
  answer after the prompt (score mode).
- `yes_no(requests, yes, no)`: per request, logit(yes) - logit(no) after prefix+suffix.
- `generate(prompts, max_new_tokens, eos)`: greedy continuations (generate mode).
- `describe()`: facts for the cell (precision, device, versions).
Training (adapters, mixture weights) always runs in transformers (`trainer_model`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch


@dataclass(frozen=True)
class AnswerRequest:
    """Score mode: one prompt, several answers (each ends with end-of-sequence)."""

    prompt: tuple[int, ...]
    answers: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class ChoiceRequest:
    """Yes/no mode: a shared prefix and one suffix per candidate."""

    prefix: tuple[int, ...]
    suffixes: tuple[tuple[int, ...], ...]


class LLMBackend(ABC):
    name: ClassVar[str] = ""

    @abstractmethod
    def set_adapter(self, path: Path | None) -> None:
        """Serve the PEFT LoRA at `path` from now on (None: no adapter)."""

    @abstractmethod
    def answer_logprobs(self, requests: Sequence[AnswerRequest],
                        vocab: torch.Tensor | None = None) -> list[np.ndarray]:
        """Per request, the summed log-probability of each answer's tokens. `vocab`
        (sorted token ids) restricts the softmax to those tokens; None: all."""

    @abstractmethod
    def yes_no(self, requests: Sequence[ChoiceRequest], yes: int, no: int
               ) -> list[np.ndarray]:
        """Per request, logit(yes) - logit(no) after prefix + each suffix."""

    @abstractmethod
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos: int
                 ) -> list[list[int]]:
        """Greedy continuation of each prompt, up to end-of-sequence (not included)."""

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}

    def close(self) -> None:  # noqa: B027  (optional: most backends free on deletion)
        """Free the model (a row loads several backbones one after another)."""
