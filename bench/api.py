"""The system contract: what every recommender in a table implements.

A system is fit on training data (and, if it wants them, titles and the domain-general
corpus), may select its own hyperparameters on the validation candidates, and then scores
batches of (history, candidates: 1 positive + 29 negatives by default; `--negatives N`
changes the count, `--negatives all` gives the whole pool, see `full_ranking`). It never samples
candidates and never sees a test positive: test requests carry no label. The data types
live in protocols/data.py and are re-exported here, so plugins import everything from
this module; `bench.testing.check_system` checks a class against this contract.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from protocols.data import ScoreRequest, TrainData, UserSequence, Validation

__all__ = ["GROUPS", "ScoreRequest", "System", "TrainData", "UserSequence", "Validation",
           "check_scores"]

GROUPS = ("Reference", "Traditional", "Transferable", "LLM-Based", "Ours")


class System(ABC):
    """Base class of every row in a table. To add a system, subclass it and override:

    - `name`: the canonical name, unique (case-insensitively) among systems; also the
      row label unless `label` says otherwise.
    - `group`: one of GROUPS, where the row goes (checked when the system is resolved,
      before any cell is written).
    - `profiles`: profile name -> the settings dict the system receives as `config`; a
      "default" entry serves every profile not listed (so a new profile needs no edit
      here). The runner hashes the config into the cache key, so it must be JSON data.
      Name keys as the other families do: `lr`, `batch_size`, `epochs`, `patience`.
    - `fit(data, valid)`: train on `data`; select on `valid` only (its positives are the
      only labels a system sees), e.g. `valid.evaluate(self.score)`.
    - `score(requests)`: a (len(requests), n_candidates) float array, higher first;
      finite, or a whole row of NaN to abstain (a miss). Deterministic for a seed.

    Optionally:

    - `__init__(config, seed, workdir)`: call super() first. `self.workdir` is shared by
      a run's cells: keep reusable artifacts there in a `protocols.store.Store`.
    - `label`: the row label, when it depends on the config (the zero-shot backbone row
      is named after its backbone).
    - `configure(config, backbone, backbone_label)`: the config the cell runs with
      (`--backbone` applied, outside files pinned by their sha256).
    - `describe()`: facts stored in cell.json; a "caption_note" entry is stated in the
      table caption.
    - `multithreaded = True`: the runner gives the cell every CPU core (large models;
      small ones run fastest on one thread when anything else runs beside them).
    - `uses_gpu = True`: in a parallel run whose workers offer a `GPU` resource, each
      cell asks for one (`dask worker --resources GPU=1`), so cells of other systems are
      never held back by a busy GPU and two such cells never share one.
    - `full_ranking = True`: the system can score a whole catalogue per user cheaply (an
      embedding or a count per item), so it runs in `--negatives all` tables: each test
      request then lists the whole test pool (the same tuple for every user, the user's
      own items included; the harness drops those after scoring) and arrives in batches
      sized so that batch x pool scores stay bounded. Systems without it are left out of
      those tables, the caption saying why (`full_ranking_reason`).

    Seed with `bench.seeding.seed_everything`, then check the class with
    `bench.testing.check_system(MySystem)` and register it as an entry point of group
    `molorec_bench.systems` (docs/extending.md, "Adding a system").
    """

    name: ClassVar[str] = ""
    group: ClassVar[str] = "Traditional"
    profiles: ClassVar[dict[str, dict[str, Any]]] = {"default": {}}
    # True: the runner gives the cell every CPU core (large models); else one thread
    multithreaded: ClassVar[bool] = False
    # True: on a Dask cluster whose workers offer a `GPU` resource, each cell takes one
    uses_gpu: ClassVar[bool] = False
    # raise when a code change moves this system's numbers: its cells computed before are
    # then not reused (part of the cell key once past 1)
    version: ClassVar[int] = 1
    # True: cheap enough to rank every item per user (`--negatives all` tables)
    full_ranking: ClassVar[bool] = False
    full_ranking_reason: ClassVar[str] = "it does not declare full-ranking support"

    def __init__(self, config: dict[str, Any], seed: int, workdir: str | None = None):
        self.config = dict(config)
        self.seed = seed
        self.workdir = workdir  # a directory shared by a run's cells (pretrained modules)

    @classmethod
    def has_config(cls, profile: str) -> bool:
        return profile in cls.profiles or "default" in cls.profiles

    @classmethod
    def config_for(cls, profile: str) -> dict[str, Any]:
        """The settings for `profile`: its own entry, else the "default" one."""
        if profile in cls.profiles:
            return dict(cls.profiles[profile])
        if "default" in cls.profiles:
            return dict(cls.profiles["default"])
        raise KeyError(f"system {cls.name!r} has no settings for profile {profile!r} (and no "
                       "'default' entry)")

    @classmethod
    def configure(cls, config: dict[str, Any], backbone: str | None = None,
                  backbone_label: str | None = None) -> dict[str, Any]:
        """The config a cell runs with, computed once by the driver before the cell key.
        `backbone` (`--backbone`: a checkpoint directory, a cached Hugging Face id or a
        .gguf file) replaces the system's LLM, labelled `backbone_label` or after the
        model. A system that loads outside files must name them by identity here (their
        sha256), since the key hashes this config. Default: `config` unchanged (a
        system without an LLM ignores `backbone`)."""
        return config

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


def check_scores(scores: Any, requests: Sequence[ScoreRequest], who: str) -> np.ndarray:
    """The contract on what `score` returned: (n, n_candidates) floats, each row finite or
    entirely NaN (an abstention). Returns the float64 array; raises ValueError."""
    s = np.asarray(scores, dtype=np.float64)
    want = (len(requests), len(requests[0].candidates) if requests else 0)
    if s.shape != want:
        raise ValueError(f"{who}.score returned shape {s.shape}, expected {want}")
    if not (np.isfinite(s) | np.isnan(s).all(axis=1, keepdims=True)).all():
        raise ValueError(f"{who}.score returned non-finite scores (only a whole row of NaN, "
                         "an abstention, is allowed)")
    return s
