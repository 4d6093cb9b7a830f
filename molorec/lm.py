"""Running a causal LM exactly as its architecture defines it, but only where we need it.

Every score, training loss and entropy here goes through the model's own `forward`, so
whatever an architecture adds after the vocabulary projection (Gemma's final-logit
soft-capping, logit scaling) is applied. Two things are changed, both exactly:

- `head_at`: the output projection runs only on chosen positions (the few that predict
  answer tokens), never as a full-sequence x vocabulary tensor, and optionally only on a
  subset of the vocabulary. The projection module is swapped for the duration of one
  forward; the post-projection ops are elementwise, so the kept logits are the model's.
  With `fp32` (every score that enters a ranking, molorec.ranking) those rows are
  projected in float32, autocast off, whatever the model's dtype: bf16 logits hold 8
  significant bits, so on a bf16 backbone the 30 logit(Yes) - logit(No) of a user took
  2-3 distinct values (0.15625, 0.1640625), and ties then decided the ranking. Only the
  scored rows are upcast, so it costs little.
- `attention_mask`: a custom (packed) attention pattern is handed to the model per layer
  type, so sliding-window layers keep their window (a single 4D mask would silently
  give them full attention). A layer type we cannot express is refused, not guessed.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator, Sequence

import torch
from torch import nn

SUPPORTED_LAYER_TYPES = ("full_attention", "sliding_attention")


class UnsupportedModel(ValueError):
    """A model this code cannot run exactly in the requested mode."""


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _head_attr(model: nn.Module) -> str:
    head = model.get_output_embeddings()
    for name, child in model.named_children():
        if child is head:
            return name
    raise UnsupportedModel(f"{type(model).__name__} has no output projection child module")


FP32_CHUNK_BYTES = 1 << 28  # the float32 copy of the head's weight is made in slices


def _linear_fp32(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                 ) -> torch.Tensor:
    """h @ weight.T + bias in float32, autocast off, the weight upcast a slice of rows
    at a time (a 150k x 3584 bf16 head would need 2 GB at once)."""
    with torch.autocast(h.device.type, enabled=False):
        h = h.float()
        step = max(1, FP32_CHUNK_BYTES // (4 * weight.shape[1]))
        parts = [nn.functional.linear(
            h, weight[i:i + step].float(),
            None if bias is None else bias[i:i + step].float())
            for i in range(0, weight.shape[0], step)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


class _HeadAt(nn.Module):
    """The output projection applied to `rows` of the flattened hidden states only, and
    to the `vocab` rows of its weight only (None: all); in float32 with `fp32`."""

    def __init__(self, head: nn.Module, rows: torch.Tensor, vocab: torch.Tensor | None,
                 fp32: bool = False):
        super().__init__()
        self.head, self.rows, self.vocab, self.fp32 = head, rows, vocab, fp32

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        h = hidden.reshape(-1, hidden.shape[-1])[self.rows]
        if self.vocab is None and not self.fp32:
            return self.head(h)
        if not isinstance(getattr(self.head, "weight", None), torch.Tensor):
            raise UnsupportedModel(f"the output projection {type(self.head).__name__} has no "
                                   "weight matrix to project selected rows with")
        weight, bias = self.head.weight, getattr(self.head, "bias", None)
        if self.vocab is not None:
            weight = weight[self.vocab]
            bias = None if bias is None else bias[self.vocab]
        if self.fp32:
            return _linear_fp32(h, weight, bias)
        return nn.functional.linear(h.to(weight.dtype), weight, bias)


@contextlib.contextmanager
def head_at(model: nn.Module, rows: torch.Tensor, vocab: torch.Tensor | None = None,
            fp32: bool = False) -> Iterator[None]:
    """Within the block, `model(...).logits` is (len(rows), vocab) for the flattened
    (batch * time) positions `rows` (float32 with `fp32`)."""
    base = base_model(model)
    attr = _head_attr(base)
    head = getattr(base, attr)
    setattr(base, attr, _HeadAt(head, rows, vocab, fp32))
    try:
        yield
    finally:
        setattr(base, attr, head)


def logits_at(model: nn.Module, rows: torch.Tensor, vocab: torch.Tensor | None = None,
              *, fp32: bool = False, **inputs) -> tuple[torch.Tensor, object]:
    """(logits at `rows`, the model output) of one forward of `model(**inputs)`; `fp32`:
    projected in float32 (scores that enter a ranking)."""
    with head_at(model, rows, vocab, fp32):
        out = model(**inputs)
    return out.logits, out


def layer_types(model: nn.Module) -> tuple[str, ...] | None:
    """The attention type of each layer, or None for a model with one kind everywhere."""
    cfg = base_model(model).config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    types = getattr(cfg, "layer_types", None)
    return tuple(types) if types else None


def sliding_window(model: nn.Module) -> int | None:
    cfg = base_model(model).config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    types = layer_types(model)
    if types is not None:
        return cfg.sliding_window if "sliding_attention" in types else None
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return int(cfg.sliding_window)
    return None


def custom_mask(model: nn.Module, allow: torch.Tensor, q_pos: torch.Tensor,
                kv_pos: torch.Tensor, dtype: torch.dtype):
    """The attention mask to pass for a custom pattern: `allow` (q x kv, bool; or batch x
    q x kv, one pattern per row) says which keys each query may see; `q_pos`/`kv_pos`
    are their positions (with the same leading batch dimension, if any). Sliding-window
    layers additionally see only keys less than `window` positions back. Returns a 4D
    additive mask, or a dict of them per layer type where the layers differ."""
    window = sliding_window(model)
    types = layer_types(model)
    if types is not None:
        unknown = sorted(set(types) - set(SUPPORTED_LAYER_TYPES))
        if unknown:
            raise UnsupportedModel(
                f"packed scoring cannot express attention of type {unknown} exactly; use "
                "ranking.sharing: batch")
    elif window is not None:
        raise UnsupportedModel(
            "this model uses a sliding window without per-layer types, which a custom mask "
            "would bypass; use ranking.sharing: batch")

    def additive(ok: torch.Tensor) -> torch.Tensor:
        m = torch.zeros(ok.shape, dtype=dtype).masked_fill(~ok, torch.finfo(dtype).min)
        return (m[None, None] if m.dim() == 2 else m[:, None]).to(device_of(model))

    full = additive(allow)
    if window is None:
        return full
    near = (q_pos[..., :, None] - kv_pos[..., None, :]) < window
    return {"full_attention": full, "sliding_attention": additive(allow & near)}


def cache_kw(model: nn.Module) -> str:
    """The forward keyword of the KV cache (`cache` since transformers 5.x, earlier
    `past_key_values`)."""
    params = inspect.signature(type(base_model(model)).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def new_cache():
    """A KV cache that keeps every layer's keys whole (no sliding-window cropping), so a
    custom mask over all cached positions is valid for every layer."""
    from transformers import DynamicCache

    return DynamicCache()


@functools.cache
def cpu_has_bf16() -> bool:
    """Native bf16 matrix instructions (AVX512-BF16 or AMX): where bf16 autocast is faster
    than fp32. Elsewhere (AVX2) bf16 is emulated and several times slower."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_compute(requested: str, device: torch.device | str) -> str:
    """The compute precision to use: `auto` is bf16 autocast on a CPU with native bf16,
    fp32 on other CPUs, and the weights' own dtype on an accelerator."""
    if requested not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"compute must be auto, float32 or bfloat16, got {requested!r}")
    if requested != "auto":
        return requested
    if torch.device(device).type != "cpu":
        return "weights"
    return "bfloat16" if cpu_has_bf16() else "float32"


def autocast(compute: str, device: torch.device | str):
    """The autocast context for a resolved compute precision (a no-op for fp32/weights)."""
    dev = torch.device(device).type
    if compute == "bfloat16":
        return torch.autocast(dev, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def right_pad(seqs: Sequence[Sequence[int]], pad: int, device
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of right-padded sequences."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, :len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[row, :len(s)] = 1
    return ids.to(device), mask.to(device)
