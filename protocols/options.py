"""The protocol's build options and their defaults, in one place: `protocol build`'s
flags, the profiles and the reuse check of a built protocol all read them here."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from protocols.errors import OptionError


@dataclass(frozen=True)
class ProtocolOptions:
    kcore: int = 5  # k-core filter of each part (1: none)
    general_fraction: float = 0.5  # share of users moved to the domain-general corpus
    cold_fraction: float = 0.1  # share of target items made new in the cold setting
    max_users: int | None = None  # seeded user subsample per part (None: all)
    # sampled negatives per validation and test user; FULL ("all"): the test user ranks
    # every item of the test pool they have not interacted with (validation stays sampled
    # at the default, so a system is fitted and selected exactly as in the default table)
    negatives: int | str = 29
    # datasets the domain-general corpus comes from (protocols.general); empty: the seeded
    # `general_fraction` of the target dataset's own users
    general_from: tuple[str, ...] = ()

    @property
    def n_candidates(self) -> int:
        """Candidates per sampled request (full ranking: those of the validation file)."""
        return self.sampled_negatives + 1

    @property
    def full_ranking(self) -> bool:
        return self.negatives == FULL

    @property
    def sampled_negatives(self) -> int:
        """Negatives of the sampled candidate files (full ranking: the validation file's)."""
        return DEFAULT_NEGATIVES if self.negatives == FULL else int(self.negatives)

    def as_dict(self) -> dict[str, Any]:
        """What a manifest records under `options` (`general_from` only when set, so
        manifests of the default corpus are unchanged)."""
        out = asdict(self)
        out["general_from"] = list(self.general_from)
        if not self.general_from:
            del out["general_from"]
        return out

    def check(self) -> None:
        """Range checks, before any data is read (a bad value is an error, never a
        default); messages name the command-line flags."""
        if not _int_at_least(self.kcore, 1):
            raise OptionError(f"--kcore must be an integer >= 1 (1: no filtering), got "
                              f"{self.kcore!r}")
        _fraction("general-fraction", self.general_fraction)
        _fraction("cold-fraction", self.cold_fraction)
        if self.max_users is not None and not _int_at_least(self.max_users, 1):
            raise OptionError(f"--max-users must be an integer >= 1 (omit it for no limit), "
                              f"got {self.max_users!r}")
        if self.negatives != FULL and not _int_at_least(self.negatives, 1):
            raise OptionError(f"--negatives must be an integer >= 1 or '{FULL}', got "
                              f"{self.negatives!r}")
        names = self.general_from
        if (isinstance(names, str) or not all(isinstance(n, str) and n for n in names)
                or len(set(names)) != len(names)):
            raise OptionError(f"--general-from must name distinct datasets, got {names!r}")


DEFAULT_NEGATIVES = 29  # the paper's 1 positive + 29 negatives
FULL = "all"


def parse_negatives(text: str) -> int | str:
    """`--negatives`'s value: an integer >= 1, or "all" (full ranking)."""
    if text.strip().lower() == FULL:
        return FULL
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise OptionError(f"--negatives must be an integer >= 1 or '{FULL}', got {text!r}")
    return n


def negatives_suffix(negatives: int | str) -> str:
    """What a setting directory and a table name carry for a non-default candidate count
    ("warm-n99", "warm-nall"), so results at several counts live side by side in one
    --out; the default's paths are the ones every earlier results folder has."""
    return "" if negatives == DEFAULT_NEGATIVES else f"-n{negatives}"


def split_suffix(name: str) -> tuple[str, int | str]:
    """("warm", 99) for "warm-n99", ("warm", 29) for "warm": the inverse of
    `negatives_suffix` on a table or setting directory name."""
    m = re.fullmatch(r"(.+)-n(all|[1-9][0-9]*)", name)
    if m is None:
        return name, DEFAULT_NEGATIVES
    return m.group(1), FULL if m.group(2) == FULL else int(m.group(2))


def _int_at_least(value: Any, low: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= low


def _fraction(name: str, value: Any) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value < 1):
        raise OptionError(f"--{name} must be a number strictly between 0 and 1, got {value!r}")
