"""The data model every layer shares: what a protocol holds and what a system sees.

It lives at the bottom (protocols/) because the protocol files are read into it;
`bench.api` re-exports it, so systems and plugins import it from there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class UserSequence:
    """One user's chronological items. `targets` are the positions that are training
    samples (each predicts items[t] from items[:t]); None means every position >= 1."""

    user: str
    items: tuple[str, ...]
    targets: tuple[int, ...] | None = None

    def target_positions(self) -> tuple[int, ...]:
        if self.targets is None:
            return tuple(range(1, len(self.items)))
        return self.targets


@dataclass(frozen=True)
class ScoreRequest:
    """What a system sees at scoring time: no label."""

    user: str
    history: tuple[str, ...]  # oldest first
    candidates: tuple[str, ...]  # 1 positive + the negatives, in the candidate file's order


@dataclass(frozen=True)
class TrainData:
    """Everything a system may learn from."""

    titles: dict[str, str]  # item id -> title, every item any protocol file mentions
    train: tuple[UserSequence, ...]  # target domain, training split
    general: tuple[UserSequence, ...]  # domain-general corpus
    setting: str  # a registered setting: warm | cold | fewshot-10 | ...
    dataset: str


@dataclass(frozen=True)
class Validation:
    """Validation requests with their positives: the only labels a system may select on."""

    requests: tuple[ScoreRequest, ...]
    positives: tuple[str, ...]

    def evaluate(self, score: Callable[[Sequence[ScoreRequest]], np.ndarray], k: int = 1) -> float:
        """Mean tie-aware NDCG@k of `score` on these requests (the selection criterion)."""
        from protocols.metrics import ndcg_at_k, positive_index

        scores = np.asarray(score(self.requests), dtype=np.float64)
        pos = positive_index(self.requests, self.positives)
        return float(ndcg_at_k(scores, pos, k).mean())
