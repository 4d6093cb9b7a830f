"""A registry of named things (systems, settings, datasets), in the style of
lm-evaluation-harness: built-ins plus plugins from an entry-point group.

Entries are objects or 'module:attr' strings imported only when used, so listing names
never imports torch-heavy modules. A name is matched exactly, then case-insensitively;
an unknown name answers with the closest ones ("did you mean"). A plugin whose name
clashes with a built-in (in any case) or with another plugin is refused, with the reason.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from protocols.errors import HarnessError

T = TypeVar("T")


class UnknownName(HarnessError, KeyError):
    """A name no registry entry has; the message lists the closest names."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


class RegistryError(HarnessError, ValueError):
    """An entry that cannot be used: a name clash, or a target of the wrong kind."""


def norm(name: str) -> str:
    """The name with case and punctuation dropped (what 'did you mean' compares)."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def suggest(name: str, choices: Iterable[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """The choices closest to `name` (one that differs only in case or punctuation first)."""
    by_norm: dict[str, str] = {}
    for c in choices:
        by_norm.setdefault(norm(c), c)
    if norm(name) in by_norm:
        return [by_norm[norm(name)]]
    close = difflib.get_close_matches(norm(name), list(by_norm), n=n, cutoff=cutoff)
    return [by_norm[c] for c in close]


def did_you_mean(close: Iterable[str]) -> str:
    close = list(close)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def import_target(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def spec_of(kind: str, spec_type: type[T]) -> Callable[[str, Any], T]:
    """A `check` for registries of specs: the entry is a `spec_type` named as registered."""
    def check(name: str, obj: Any) -> T:
        if not isinstance(obj, spec_type) or getattr(obj, "name", None) != name:
            raise RegistryError(f"{kind} {name!r} must be a {spec_type.__name__} named "
                                f"{name!r}, got {obj!r}")
        return obj

    return check


class Registry(Generic[T]):
    """Built-in entries (`builtin`, name -> object or 'module:attr') plus the plugins of
    entry-point group `group`. `check(name, obj)` validates what an entry loads to.
    `find_plugins(group)` lists entry points (importlib.metadata's, by default)."""

    def __init__(self, kind: str, group: str, builtin: dict[str, Any],
                 check: Callable[[str, Any], T] | None = None,
                 find_plugins: Callable[[str], Iterable[Any]] | None = None,
                 unknown: type[HarnessError] = UnknownName):
        self.kind, self.group, self.builtin = kind, group, builtin
        self._check = check
        self._find = find_plugins or (lambda g: entry_points(group=g))
        self.unknown = unknown

    def _plugins(self) -> tuple[dict[str, str], dict[str, str]]:
        """(accepted name -> target, refused name -> reason) over the entry points."""
        taken = {n.lower(): n for n in self.builtin}
        eps = {(ep.name, ep.value) for ep in self._find(self.group)}
        by_name: dict[str, list[tuple[str, str]]] = {}
        for name, value in sorted(eps):
            by_name.setdefault(name.lower(), []).append((name, value))
        accepted, refused = {}, {}
        for low, regs in sorted(by_name.items()):
            for name, value in regs:
                if low in taken:
                    refused[name] = (f"plugin {name!r} ({value}) clashes with the built-in "
                                     f"{taken[low]!r}; rename the plugin's entry point")
                elif len(regs) > 1:
                    refused[name] = (f"plugin name {name!r} is registered by several entry "
                                     f"points ({', '.join(v for _, v in regs)}); uninstall "
                                     "all but one")
                else:
                    accepted[name] = value
        return accepted, refused

    def available(self) -> dict[str, Any]:
        """Name -> entry, built-ins first (in their order), then accepted plugins."""
        return {**self.builtin, **self._plugins()[0]}

    def refused(self) -> dict[str, str]:
        """Plugin entry points that were refused, with the reason."""
        return self._plugins()[1]

    def find(self, name: str) -> str | None:
        """The registered name `name` means (exact or case-insensitive), else None; a
        refused plugin of that name is an error (never use another entry in its place)."""
        clashes = [r for n, r in self.refused().items() if n.lower() == name.lower()]
        if clashes:
            raise RegistryError(f"{name!r} is ambiguous: {clashes[0]}")
        table = self.available()
        if name in table:
            return name
        return {n.lower(): n for n in table}.get(name.lower())

    def canonical(self, name: str, hint: str = "") -> str:
        """`find`, or an error naming the closest registered names."""
        found = self.find(name)
        if found is None:
            raise self.unknown(f"unknown {self.kind} {name!r}."
                               f"{did_you_mean(suggest(name, self.available()))} {hint}".rstrip())
        return found

    def load(self, name: str) -> T:
        """What the entry `name` (canonical) holds, imported if it is a target string and
        checked with `check`."""
        entry = self.available()[name]
        obj = import_target(entry) if isinstance(entry, str) else entry
        return self._check(name, obj) if self._check else obj

    def get(self, name: str, hint: str = "") -> T:
        return self.load(self.canonical(name, hint))

    def items(self) -> Mapping[str, T]:
        """Every entry loaded, in registry order."""
        return {name: self.load(name) for name in self.available()}
