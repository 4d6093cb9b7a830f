"""The system contract: what every recommender in a table implements.

A system is fit on training data (and, if it wants them, titles and the domain-general
corpus), may select its own hyperparameters on the validation candidates, and then scores
batches of (history, 30 candidates). It never samples candidates and never sees a test
positive: test requests carry no label.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

GROUPS = ("Reference", "Traditional", "Transferable", "LLM-Based", "Ours")


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
    candidates: tuple[str, ...]  # 30 ids, in the candidate file's order


@dataclass(frozen=True)
class TrainData:
    """Everything a system may learn from."""

    titles: dict[str, str]  # item id -> title, every item any protocol file mentions
    train: tuple[UserSequence, ...]  # target domain, training split
    general: tuple[UserSequence, ...]  # domain-general corpus
    setting: str  # warm | cold | fewshot-10 | ...
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


class System(ABC):
    """Base class for recommenders. Subclasses set `name`, `group` and `profiles`.

    `profiles` maps a profile name (smoke, cpu, paper) to the settings dict the system
    receives as `config`; the runner hashes it into the cache key.
    """

    name: ClassVar[str] = ""
    group: ClassVar[str] = "Traditional"
    profiles: ClassVar[dict[str, dict[str, Any]]] = {"smoke": {}, "cpu": {}, "paper": {}}

    def __init__(self, config: dict[str, Any], seed: int, workdir: str | None = None):
        self.config = dict(config)
        self.seed = seed
        self.workdir = workdir  # a private directory for caches (e.g. pretrained modules)

    @classmethod
    def config_for(cls, profile: str) -> dict[str, Any]:
        if profile not in cls.profiles:
            raise KeyError(f"system {cls.name!r} has no settings for profile {profile!r}")
        return dict(cls.profiles[profile])

    @abstractmethod
    def fit(self, data: TrainData, valid: Validation) -> None:
        """Train; may use `valid` for early stopping and hyperparameter selection."""

    @abstractmethod
    def score(self, requests: Sequence[ScoreRequest]) -> np.ndarray:
        """Return a (len(requests), n_candidates) float array; higher ranks first.

        Scores must be finite, except that a row of all NaN abstains (e.g. a generated
        answer naming no candidate): it counts as a miss, the positive ranked last."""

    @property
    def label(self) -> str:
        """The table row label; the zero-shot backbone row uses the backbone's name."""
        return self.name

    def describe(self) -> dict[str, Any]:
        """Extra facts for the report (selected hyperparameters, mixture weights...)."""
        return {}

    def close(self) -> None:  # noqa: B027  (optional: most systems free on deletion)
        """Free what fit() loaded (e.g. an LLM engine); the runner calls it once the cell
        is scored, before the next system loads its own."""
