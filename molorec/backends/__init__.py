"""LLM backends: the one interface the LLM rows use to run a model (see base.LLMBackend).

Registered by name and imported only when used, so vLLM is never imported unless a
profile asks for it: `hf` (transformers, also the trainer of every adapter) and, where
installed, `vllm`.
"""

from __future__ import annotations

import difflib
import importlib

from molorec.backends.base import AnswerRequest, ChoiceRequest, LLMBackend

BACKENDS: dict[str, str] = {
    "hf": "molorec.backends.hf:HFBackend",
    "vllm": "molorec.backends.vllm:VLLMBackend",
}

__all__ = ["AnswerRequest", "BACKENDS", "ChoiceRequest", "LLMBackend", "backend_class"]


def backend_class(name: str) -> type[LLMBackend]:
    """The backend class registered as `name` (a clear error for unknown names)."""
    if name not in BACKENDS:
        close = difflib.get_close_matches(name, list(BACKENDS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown LLM backend {name!r}; known: {', '.join(BACKENDS)}.{hint}")
    module, _, attr = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), attr)
