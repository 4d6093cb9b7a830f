"""Synthetic data with learnable structure and micro configs, for tests and benchmarks.

Users walk forward through a catalogue (item i tends to be followed by item i+1 or i+2),
so the next item is predictable from the history; titles are word pairs. Items of
`eval_only` appear only in the validation candidates (never in a training sequence): the
instruction builder must never pick them as negatives.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from bench.api import ScoreRequest, TrainData, UserSequence, Validation
from molorec.profiles import COMMON

_WORDS = ("red", "blue", "green", "night", "day", "river", "stone", "glass", "paper", "iron",
          "silver", "quiet", "storm", "garden", "winter", "summer", "shadow", "light")


def title(i: int) -> str:
    return f"The {_WORDS[i % len(_WORDS)]} {_WORDS[(i // len(_WORDS)) % len(_WORDS)]} {i}"


def synthetic(n_users: int = 24, n_items: int = 60, length: int = 10, seed: int = 0,
              offset: int = 0, dataset: str = "synthetic", eval_only: int = 5
              ) -> tuple[TrainData, Validation, tuple[ScoreRequest, ...], tuple[str, ...]]:
    """(data, valid, test requests, test positives) of a toy domain. The general corpus
    does not depend on `seed`; `offset` shifts user ids, so two calls with different
    seeds give two target domains over the same general corpus."""
    rng = np.random.default_rng(seed)

    def walk(u: int, rng: np.random.Generator = rng) -> tuple[str, ...]:
        start = int(rng.integers(0, n_items))
        steps = rng.choice([1, 2], size=length - 1, p=[0.8, 0.2])
        seq = [start]
        for s in steps:
            seq.append((seq[-1] + int(s)) % n_items)
        return tuple(str(i) for i in seq)

    items = [str(i) for i in range(n_items + eval_only)]
    titles = {i: title(int(i)) for i in items}
    general_rng = np.random.default_rng(10_000)  # one general corpus for every domain
    general = tuple(UserSequence(f"g{u}", walk(u, general_rng)) for u in range(n_users))
    full = [(f"u{u + offset}", walk(u)) for u in range(n_users)]
    train = tuple(UserSequence(u, s[:-2]) for u, s in full)
    extra = items[n_items:]

    def request(u: str, hist: tuple[str, ...], pos: str) -> ScoreRequest:
        pool = [i for i in items[:n_items] if i not in hist and i != pos]
        negs = list(rng.choice(pool, size=29 - len(extra), replace=False)) + extra
        cands = [pos, *negs]
        order = rng.permutation(30)
        return ScoreRequest(u, hist, tuple(cands[j] for j in order))

    valid = Validation(tuple(request(u, s[:-2], s[-2]) for u, s in full),
                       tuple(s[-2] for _, s in full))
    test = tuple(request(u, s[:-1], s[-1]) for u, s in full)
    data = TrainData(titles, train, general, "warm", dataset)
    return data, valid, test, tuple(s[-1] for _, s in full)


def micro_config(system: str = "molorec", **overrides: Any) -> dict[str, Any]:
    """The smoke settings shrunk to seconds: a 1-layer backbone, few steps."""
    cfg = copy.deepcopy(COMMON["smoke"])
    cfg["backbone"].update({"vocab_size": 400, "hidden_size": 64, "intermediate_size": 128,
                            "num_hidden_layers": 1, "num_attention_heads": 1,
                            "num_key_value_heads": 1,
                            "pretrain": {"epochs": 1, "lr": 3e-3, "batch_size": 8,
                                         "seq_len": 64, "max_tokens": 4000, "seed": 0}})
    cfg["lora"] = {**cfg["lora"], "r": 4, "alpha": 8}
    for part in ("general", "specific", "tallrec"):
        cfg[part] = {"max_targets_per_user": 1,
                     "train": {"epochs": 1, "lr": 3e-3, "batch_size": 8, "micro_batch_size": 8},
                     **({"negatives_per_target": 1} if part == "tallrec" else {})}
    cfg["mixture"]["entropy"].update({"n_prompts": 4, "epochs": 1, "batch_size": 4})
    for key, value in overrides.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    from molorec.profiles import _PARTS

    return {p: cfg[p] for p in _PARTS[system] if p in cfg}


def reclora_micro_config(**overrides: Any) -> dict[str, Any]:
    """RecLoRA's smoke settings on micro_config's backbone: a one-epoch SASRec, N 2."""
    from molorec.profiles import RECLORA

    cfg = {p: micro_config("backbone")[p] for p in ("backbone", "prompt", "ranking")}
    cfg.update(copy.deepcopy(RECLORA["smoke"]))
    cfg["recommender"]["config"]["epochs"] = 1
    cfg["reclora"]["train"] = {"epochs": 1, "lr": 3e-3, "batch_size": 8, "micro_batch_size": 8}
    for key, value in overrides.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg
