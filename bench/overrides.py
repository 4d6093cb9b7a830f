"""`--set SYSTEM.PATH=VALUE`: change one setting of a system's profile config for a run.

How a user runs a cheaper or a different variant without editing code
(`--set MoLoRec.specific.train.epochs=1`, `--set '*.prompt.max_history=20'`). SYSTEM is
a system name (any case) or a row label, or `*` for every system of the run that has
PATH. VALUE is read as JSON (a number, true/false/null, a string in quotes, a list)
and otherwise kept as the string it is; nothing is evaluated. PATH must name a setting
the profile gives that system (an unknown one is an error with the closest names), and
a number stays a number. The changed config is what the cell key hashes; the changes
are recorded in cell.json (`overrides`) and stated in the table caption.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench import registry
from protocols.errors import OptionError

ALL = "*"


@dataclass(frozen=True)
class Override:
    system: str  # as given, or ALL
    path: tuple[str, ...]
    value: Any
    text: str  # the option as given

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


def _value(text: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, dict):
        raise OptionError(f"--set value {text}: set the keys of a section one by one")
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        raise OptionError(f"--set value {text}: a list of numbers or strings only")
    return value


def parse(text: str) -> Override:
    """One `SYSTEM.PATH=VALUE`."""
    left, eq, right = text.partition("=")
    system, dot, path = left.strip().partition(".")
    keys = tuple(k.strip() for k in path.split(".")) if path else ()
    if not eq or not dot or not system or not keys or not all(keys):
        raise OptionError(f"--set {text!r}: expected SYSTEM.PATH=VALUE, e.g. "
                          "MoLoRec.specific.train.epochs=1 or '*.prompt.max_history=20'")
    return Override(system.strip(), keys, _value(right.strip()), text)


def leaf_paths(config: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Every setting of a config as a dotted path."""
    out = []
    for k, v in config.items():
        path = f"{prefix}{k}"
        out += leaf_paths(v, path + ".") if isinstance(v, Mapping) and v else [path]
    return out


def _has(config: Mapping[str, Any], path: Sequence[str]) -> bool:
    node: Any = config
    for k in path:
        if not isinstance(node, Mapping) or k not in node:
            return False
        node = node[k]
    return True


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_type(o: Override, old: Any, who: str) -> None:
    new = o.value
    if isinstance(old, Mapping):
        raise OptionError(f"--set {o.text}: {who} {o.dotted} is a section; set one of its "
                          f"settings ({', '.join(leaf_paths(old, o.dotted + '.')[:6])})")
    numeric = _is_number(old) or (isinstance(old, list) and bool(old)
                                   and all(_is_number(x) for x in old))
    numbers = [new] if not isinstance(new, list) else new
    if numeric and not (numbers and all(_is_number(x) for x in numbers)):
        raise OptionError(f"--set {o.text}: {who} {o.dotted} is a number ({old!r})")
    if isinstance(old, bool) and not isinstance(new, bool):
        raise OptionError(f"--set {o.text}: {who} {o.dotted} is true or false ({old!r})")


def _assign(config: dict[str, Any], o: Override, who: str) -> dict[str, Any]:
    out = copy.deepcopy(config)
    node = out
    for k in o.path[:-1]:
        node = node[k]
    _check_type(o, node[o.path[-1]], who)
    node[o.path[-1]] = copy.deepcopy(o.value)
    return out


def _unknown(o: Override, who: str, configs: Sequence[Mapping[str, Any]]) -> OptionError:
    known = sorted({p for c in configs for p in leaf_paths(c)})
    close = difflib.get_close_matches(o.dotted, known, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return OptionError(f"--set {o.text}: {who} {o.dotted!r}{hint}")


def _profile_configs(profile: str) -> list[Mapping[str, Any]]:
    """The `profile` configs of every registered system (those that have one and can be
    imported here: the vLLM environment has no recbole, so no RecBole rows)."""
    out = []
    for name in registry.available():
        try:
            out.append(registry.resolve(name, profile).config_for(profile))
        except (KeyError, LookupError, ImportError, registry.RegistryError):
            continue
    return out


def apply(texts: Sequence[str], configs: Mapping[str, dict[str, Any]], profile: str,
          log: Callable[[str], None] = print
          ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Apply `--set` options to the run's configs (canonical name -> the profile's config).
    Returns (the new configs, canonical name -> {dotted path: value} applied). An option
    for a known system that is not in this run is reported and skipped."""
    out = {n: copy.deepcopy(c) for n, c in configs.items()}
    applied: dict[str, dict[str, Any]] = {n: {} for n in configs}
    for text in texts:
        o = parse(text)
        if o.system == ALL:
            targets = [n for n in out if _has(out[n], o.path)]
            if not targets:
                others = _profile_configs(profile)
                if any(_has(c, o.path) for c in others):  # a setting of systems not run here
                    log(f"--set {text}: no system of this run has {o.dotted}; ignored")
                    continue
                raise _unknown(o, "no system has a setting", list(out.values()) + others)
        else:
            name = registry.canonical(o.system, profile)
            if name not in out:
                log(f"--set {text}: {name} is not a system of this run; ignored")
                continue
            if not _has(out[name], o.path):
                raise _unknown(o, f"{name} (profile {profile}) has no setting", [out[name]])
            targets = [name]
        for n in targets:
            out[n] = _assign(out[n], o, n)
            applied[n][o.dotted] = o.value
    return out, applied


def caption_note(applied: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The caption's sentence on settings changed from the profile, by row."""
    parts = [f"{row} {path}={json.dumps(v)}" for row, changes in applied.items()
             for path, v in changes.items()]
    return ("Settings changed from the profile (--set): " + "; ".join(parts)) if parts else None
