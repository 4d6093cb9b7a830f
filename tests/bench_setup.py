"""What the LLM benchmarks share: torch threads, the cache directory and the real ML-100K
warm protocol, built once per cache (not a test or benchmark file itself)."""

from __future__ import annotations

import os
import tempfile

import torch


def threads() -> None:
    """$MOLOREC_BENCH_THREADS torch threads (default: every core)."""
    torch.set_num_threads(int(os.environ.get("MOLOREC_BENCH_THREADS") or os.cpu_count() or 1))


def warm_protocol():
    """(cache directory, the ML-100K warm protocol): $MOLOREC_BENCH_CACHE keeps the
    converted backbone and the protocol between runs; default a new temporary directory."""
    from protocols.build import build_protocol
    from protocols.files import load_protocol

    work = os.environ.get("MOLOREC_BENCH_CACHE") or tempfile.mkdtemp(prefix="bench-gemma-")
    root = os.path.join(work, "protocol-warm")
    if not os.path.exists(root):
        build_protocol("ml-100k", "warm", 0, root)
    return work, load_protocol(root)
