"""A kit for system authors: `check_system(MySystem)` checks a class against the contract
of bench.api.System, as the built-in systems' tests do.

On a small synthetic domain (or the one given) it checks, and raises ContractError naming
the first breach:
- the class: a name, a group of GROUPS, settings for every profile (its own entry or a
  "default" one), each a JSON object (it is hashed into the cache key);
- fit, then score on test requests: a (n, n_candidates) array, each row finite or all
  NaN (an abstention);
- no label access while scoring: reading the validation positives after fit is an error
  (test requests carry no label at all);
- determinism: a second instance with the same seed and workdir (its artifacts reused, as
  a run's cells share them) gives the same scores, NaN for NaN.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.api import (
    GROUPS,
    ScoreRequest,
    System,
    TrainData,
    UserSequence,
    Validation,
    check_scores,
)
from bench.seeding import seed_everything
from protocols.options import ProtocolOptions

Domain = tuple[TrainData, Validation, Sequence[ScoreRequest]]  # data, valid, test requests
_WORDS = ("red", "blue", "night", "river", "stone", "glass", "quiet", "storm", "garden", "light")


class ContractError(AssertionError):
    """A system breaks the contract of bench.api.System."""


@dataclass(frozen=True)
class Checked:
    """What `check_system` fitted and scored (for further assertions)."""

    system: System
    scores: np.ndarray


def toy_domain(n_users: int = 24, n_items: int = 60, length: int = 10,
               n_candidates: int = ProtocolOptions().n_candidates, seed: int = 0) -> Domain:
    """Users walk a catalogue (item i is mostly followed by i+1), items have titles, a
    user-disjoint general corpus; validation and test ask for the next item among
    1 positive + (n_candidates - 1) negatives."""
    rng = np.random.default_rng(seed)
    titles = {str(i): f"The {_WORDS[i % 10]} {_WORDS[i // 10 % 10]} {i}" for i in range(n_items)}

    def walk() -> list[str]:
        seq = [int(rng.integers(n_items))]
        for step in rng.choice([1, 2], size=length - 1, p=[0.8, 0.2]):
            seq.append((seq[-1] + int(step)) % n_items)
        return [str(i) for i in seq]

    def request(user: str, history: list[str], positive: str) -> ScoreRequest:
        pool = [i for i in titles if i not in history and i != positive]
        cands = [positive, *rng.choice(pool, n_candidates - 1, replace=False)]
        return ScoreRequest(user, tuple(history), tuple(cands[j] for j in
                                                      rng.permutation(n_candidates)))

    general = tuple(UserSequence(f"g{u}", tuple(walk())) for u in range(n_users))
    full = [(f"u{u}", walk()) for u in range(n_users)]
    valid = Validation(tuple(request(u, s[:-2], s[-2]) for u, s in full),
                       tuple(s[-2] for _, s in full))
    test = tuple(request(u, s[:-1], s[-1]) for u, s in full)
    data = TrainData(titles, tuple(UserSequence(u, tuple(s[:-2])) for u, s in full), general,
                     "warm", "toy")
    return data, valid, test


class _LabelGuard(Validation):
    """A Validation whose positives cannot be read once `closed` (after fit)."""

    closed = False

    def __getattribute__(self, name: str) -> Any:
        if name == "positives" and object.__getattribute__(self, "closed"):
            raise ContractError("score() read the validation labels: labels are for fit() "
                                "only (selection, early stopping), never for scoring")
        return super().__getattribute__(name)


def check_class(cls: type[System], profiles: Sequence[str] | None = None) -> None:
    """The class-level contract (what the registry checks, plus profile coverage)."""
    if not (isinstance(cls, type) and issubclass(cls, System)):
        raise ContractError(f"{cls!r} is not a bench.api.System subclass")
    if not isinstance(cls.name, str) or not cls.name:
        raise ContractError(f"{cls.__qualname__} has no `name`")
    if cls.group not in GROUPS:
        raise ContractError(f"{cls.name}: group {cls.group!r} is not one of {', '.join(GROUPS)}")
    if profiles is None:
        from bench.profiles import PROFILES

        profiles = list(PROFILES)
    for p in profiles:
        if not cls.has_config(p):
            raise ContractError(f"{cls.name} has no settings for profile {p!r}: add it to "
                                "`profiles`, or add a 'default' entry")
        config = cls.config_for(p)
        try:
            json.dumps(config, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise ContractError(f"{cls.name}: settings of profile {p!r} are not JSON data "
                                f"({e}); the cache key would not cover them") from None


def _fit_and_score(cls: type[System], config: dict[str, Any], seed: int, workdir: str,
                   domain: Domain) -> tuple[System, np.ndarray]:
    data, valid, test = domain
    seed_everything(seed)  # what the runner does before every cell
    system = cls(dict(config), seed, workdir)
    guard = _LabelGuard(valid.requests, valid.positives)
    system.fit(data, guard)
    object.__setattr__(guard, "closed", True)  # frozen dataclass: the guard's own flag
    try:
        scores = check_scores(system.score(list(test)), test, cls.name)
    except ValueError as e:
        raise ContractError(str(e)) from None
    return system, scores


def check_system(cls: type[System], profile: str = "smoke", *,
                 config: dict[str, Any] | None = None, domain: Domain | None = None,
                 seed: int = 0, workdir: str | None = None,
                 profiles: Sequence[str] | None = None) -> Checked:
    """Check `cls` against the contract (see the module docstring) with the settings of
    `profile` (or `config`) on `domain` (default: `toy_domain()`); returns the first
    instance and its test scores."""
    check_class(cls, profiles)
    config = cls.config_for(profile) if config is None else config
    domain = toy_domain() if domain is None else domain
    with tempfile.TemporaryDirectory(prefix="check-system-") as tmp:
        work = workdir or tmp
        system, scores = _fit_and_score(cls, config, seed, work, domain)
        _, again = _fit_and_score(cls, config, seed, work, domain)
    if not np.array_equal(scores, again, equal_nan=True):
        raise ContractError(f"{cls.name}: two instances with seed {seed} scored differently "
                            f"(max difference {np.nanmax(np.abs(scores - again)):.3g}); seed "
                            "every generator you use (bench.seeding.seed_everything)")
    return Checked(system, scores)
