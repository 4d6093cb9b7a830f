"""Choices the LLM rows make on validation, and the summaries they report.

Every choice (an adapter's learning rate, the grid weight, the entropy learning rate and
prompt count) is the first best validation value over the listed values, on the whole
validation set or on a seeded subset of it (`selection.valid_users`) where a CPU budget
asks for one; test labels are never read. The criterion is `selection.metric` (NDCG@1,
the tables' first metric, by default; MRR counts every rank, so a small subset
separates settings better).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from bench.api import Validation


def as_list(x: Any) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def first_best(results: Mapping[Any, float]) -> Any:
    """The key with the highest value; the first listed wins ties."""
    keys = list(results)
    return max(keys, key=lambda k: (results[k], -keys.index(k)))


def evaluate(valid: Validation, rank: Callable[[Sequence], np.ndarray], metric: str) -> float:
    """Mean `metric` (NDCG@k, HR@k or MRR, tie-aware) of `rank` on the validation users."""
    from protocols.metrics import compute, positive_index

    scores = np.asarray(rank(valid.requests), dtype=np.float64)
    return float(compute(metric, scores, positive_index(valid.requests, valid.positives)).mean())


def valid_subset(valid: Validation, n: int | None, seed: int) -> Validation:
    """A seeded subset of n validation users (in file order), or all of them."""
    if n is None or n >= len(valid.requests):
        return valid
    if n < 1:
        raise ValueError(f"selection.valid_users must be >= 1, got {n}")
    keep = sorted(np.random.default_rng(seed).permutation(len(valid.requests))[:n])
    return Validation(tuple(valid.requests[j] for j in keep),
                      tuple(valid.positives[j] for j in keep))


def block_of(module: str) -> str:
    """`layer N` for a module inside the N-th transformer block, else the module name."""
    parts = module.split(".")
    for j, p in enumerate(parts[:-1]):
        if p == "layers" and parts[j + 1].isdigit():
            return f"layer {parts[j + 1]}"
    return module


def by_block(weights: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    """Mean mixture weights per transformer block (a readable summary of per-layer ones),
    blocks in model order."""
    groups: dict[str, list[Sequence[float]]] = {}
    for mod, w in weights.items():
        groups.setdefault(block_of(mod), []).append(w)

    def order(name: str) -> tuple:
        tail = name.split()[-1]
        return (0, int(tail)) if name.startswith("layer ") and tail.isdigit() else (1, name)

    return {b: [round(float(x), 4) for x in np.mean(groups[b], axis=0)]
            for b in sorted(groups, key=order)}
