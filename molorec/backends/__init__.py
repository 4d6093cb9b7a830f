"""LLM backends: the one interface the LLM rows use to run a model (see base.LLMBackend).

Registered by name and imported only when used, so vLLM is never imported unless a
profile asks for it: `hf` (transformers, also the trainer of every adapter) and, where
installed, `vllm`. `auto` (the paper profile) is vllm where it is installed, else hf
with a warning saying so.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import warnings

from molorec.backends.base import AnswerRequest, ChoiceRequest, LLMBackend

BACKENDS: dict[str, str] = {
    "hf": "molorec.backends.hf:HFBackend",
    "vllm": "molorec.backends.vllm:VLLMBackend",
}

AUTO = "auto"
NO_VLLM = ("vLLM is not installed, so ranking.backend: auto runs the LLM rows on transformers "
           "(hf), the slow way on a GPU: `pip install vllm` (docs/llm.md, 'vLLM backend')")

__all__ = ["AUTO", "AnswerRequest", "BACKENDS", "ChoiceRequest", "LLMBackend", "backend_class",
           "resolve"]


def resolve(name: str) -> str:
    """The backend `name` stands for: `auto` is vllm where it is installed, else hf."""
    if name != AUTO:
        return name
    if importlib.util.find_spec("vllm") is not None:
        return "vllm"
    warnings.warn(NO_VLLM, RuntimeWarning, stacklevel=2)
    return "hf"


def backend_class(name: str) -> type[LLMBackend]:
    """The backend class registered as `name` (a clear error for unknown names)."""
    if name not in BACKENDS:
        close = difflib.get_close_matches(name, list(BACKENDS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown LLM backend {name!r}; known: {', '.join(BACKENDS)} "
                         f"(or {AUTO!r}).{hint}")
    module, _, attr = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), attr)
