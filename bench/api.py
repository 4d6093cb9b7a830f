"""The system contract: what every recommender in a table implements.

A system is fit on training data (and, if it wants them, titles and the domain-general
corpus), may select its own hyperparameters on the validation candidates, and then scores
batches of (history, 30 candidates). It never samples candidates and never sees a test
positive: test requests carry no label.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from protocols.data import ScoreRequest, TrainData, UserSequence, Validation

__all__ = ["GROUPS", "ScoreRequest", "System", "TrainData", "UserSequence", "Validation"]

GROUPS = ("Reference", "Traditional", "Transferable", "LLM-Based", "Ours")


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
