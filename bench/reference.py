"""Reference rows: a seeded random scorer and training popularity."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from bench.api import ScoreRequest, System, TrainData, Validation


class Random(System):
    """Uniform random scores, seeded per user so batching does not change them."""

    name = "Random"
    group = "Reference"
    full_ranking = True  # scores every item cheaply (--negatives all)

    def fit(self, data: TrainData, valid: Validation) -> None:
        pass

    def score(self, requests: Sequence[ScoreRequest]) -> np.ndarray:
        out = np.empty((len(requests), len(requests[0].candidates) if requests else 0))
        for n, req in enumerate(requests):
            key = [self.seed, *req.user.encode()]
            out[n] = np.random.default_rng(key).random(len(req.candidates))
        return out


class Pop(System):
    """Training popularity: how often each candidate is a training target (so few-shot
    settings count only their kept samples)."""

    name = "Pop"
    group = "Reference"
    full_ranking = True  # scores every item cheaply (--negatives all)

    def fit(self, data: TrainData, valid: Validation) -> None:
        self.counts = Counter(seq.items[t] for seq in data.train for t in seq.target_positions())

    def score(self, requests: Sequence[ScoreRequest]) -> np.ndarray:
        return np.array([[float(self.counts.get(c, 0)) for c in r.candidates] for r in requests])
