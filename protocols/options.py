"""The protocol's build options and their defaults, in one place: `protocol build`'s
flags, the profiles and the reuse check of a built protocol all read them here."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from protocols.errors import OptionError


@dataclass(frozen=True)
class ProtocolOptions:
    kcore: int = 5  # k-core filter of each part (1: none)
    general_fraction: float = 0.5  # share of users moved to the domain-general corpus
    cold_fraction: float = 0.1  # share of target items made new in the cold setting
    max_users: int | None = None  # seeded user subsample per part (None: all)
    negatives: int = 29  # sampled negatives per validation and test user
    # datasets the domain-general corpus comes from (protocols.general); empty: the seeded
    # `general_fraction` of the target dataset's own users
    general_from: tuple[str, ...] = ()

    @property
    def n_candidates(self) -> int:
        return self.negatives + 1

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
        if not _int_at_least(self.negatives, 1):
            raise OptionError(f"negatives must be an integer >= 1, got {self.negatives!r}")
        names = self.general_from
        if (isinstance(names, str) or not all(isinstance(n, str) and n for n in names)
                or len(set(names)) != len(names)):
            raise OptionError(f"--general-from must name distinct datasets, got {names!r}")


def _int_at_least(value: Any, low: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= low


def _fraction(name: str, value: Any) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value < 1):
        raise OptionError(f"--{name} must be a number strictly between 0 and 1, got {value!r}")
