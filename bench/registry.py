"""Which systems exist: built-ins plus plugins from the `molorec_bench.systems` entry points.

Entries are 'module:Class' strings imported only when a system is used, so listing
systems never imports torch-heavy modules. A name is matched case-insensitively to one
canonical name; a table's row label (e.g. `TinyQwen2`, the `Backbone` system's label) also
works, looked up lazily only when no name matches. Plugins that clash with another name
are refused, as are classes that are not valid systems.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Iterable
from importlib.metadata import entry_points

from bench.api import GROUPS, System
from protocols.errors import HarnessError

ENTRY_POINT_GROUP = "molorec_bench.systems"

BUILTIN: dict[str, str] = {
    "Random": "bench.reference:Random",
    "Pop": "bench.reference:Pop",
    "BPR-MF": "baselines.bpr:BPRMF",
    "GRU4Rec": "baselines.gru4rec:GRU4Rec",
    "SASRec": "baselines.sasrec:SASRec",
    "FMLP-Rec": "baselines.fmlp:FMLPRec",
    "UniSRec": "baselines.unisrec:UniSRec",
    "VQ-Rec": "baselines.vqrec:VQRec",
    "RecFormer": "baselines.recformer:RecFormer",
    "P5": "baselines.p5:P5",
    "Backbone": "molorec.systems:Backbone",
    "TALLRec": "molorec.systems:TALLRec",
    "MoLoRec-G": "molorec.systems:MoLoRecG",
    "MoLoRec-S": "molorec.systems:MoLoRecS",
    "MoLoRec": "molorec.systems:MoLoRec",
}
HINT = "See `python -m bench list-systems`."


class UnknownSystem(HarnessError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


class RegistryError(HarnessError, ValueError):
    """A plugin that cannot be registered: a name clash or an invalid class."""


def _plugins() -> tuple[dict[str, str], dict[str, str]]:
    """(accepted name -> target, refused name -> reason) over the installed entry points."""
    taken = {n.lower(): n for n in BUILTIN}
    eps = {(ep.name, ep.value) for ep in entry_points(group=ENTRY_POINT_GROUP)}
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
                refused[name] = (f"plugin name {name!r} is registered by several entry points "
                                 f"({', '.join(v for _, v in regs)}); uninstall all but one")
            else:
                accepted[name] = value
    return accepted, refused


def available() -> dict[str, str]:
    """Name -> 'module:Class' for built-ins and accepted plugins."""
    return {**BUILTIN, **_plugins()[0]}


def refused() -> dict[str, str]:
    """Plugin entry points that were refused, with the reason."""
    return _plugins()[1]


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def label_for(cls: type[System], profile: str) -> str:
    """The row label a system gets under `profile`, without constructing it (a label
    depends only on the config; __init__ may load models)."""
    try:
        obj = object.__new__(cls)
        obj.config, obj.seed, obj.workdir = cls.config_for(profile), 0, None
        return str(obj.label)
    except Exception:  # a label that needs more than the config: the name is its label
        return cls.name


def _labels(table: dict[str, str], profile: str | None) -> dict[str, str]:
    """Row label -> canonical name, importing the registered classes (the lazy path)."""
    out: dict[str, str] = {}
    for name in table:
        try:
            cls = _import(name, table[name])
        except Exception:  # a broken plugin must not hide the other labels
            continue
        for prof in [profile] if profile else list(cls.profiles):
            if prof in cls.profiles:
                out.setdefault(label_for(cls, prof), name)
    return out


def _suggest(name: str, choices: Iterable[str]) -> list[str]:
    by_norm: dict[str, str] = {}
    for c in choices:
        by_norm.setdefault(_norm(c), c)
    if _norm(name) in by_norm:
        return [by_norm[_norm(name)]]
    close = difflib.get_close_matches(_norm(name), list(by_norm), n=3, cutoff=0.6)
    return [by_norm[c] for c in close]


def canonical(name: str, profile: str | None = None) -> str:
    """The registered name `name` means: exact, case-insensitive, or a row label."""
    table = available()
    clashes = [r for n, r in refused().items() if n.lower() == name.lower()]
    if clashes:  # never run the built-in in place of the plugin the user installed
        raise RegistryError(f"{name!r} is ambiguous: {clashes[0]}")
    if name in table:
        return name
    folded = {n.lower(): n for n in table}
    if name.lower() in folded:
        return folded[name.lower()]
    close = _suggest(name, table)
    if not close:  # only now import the systems, to learn their row labels
        labels = _labels(table, profile)
        folded_labels = {lab.lower(): n for lab, n in labels.items()}
        if name.lower() in folded_labels:
            return folded_labels[name.lower()]
        close = [f"{lab} (the row label of {labels[lab]})" if lab != labels[lab] else lab
                 for lab in _suggest(name, labels)]
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownSystem(f"unknown system {name!r}.{hint} {HINT}")


def _import(name: str, target: str) -> type[System]:
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, System)):
        raise RegistryError(f"system {name!r}: {target} is not a bench.api.System subclass")
    return cls


def resolve(name: str, profile: str | None = None) -> type[System]:
    """Import the class registered under `name` (see `canonical`) and check that it is a
    valid system: a known group, and a name and row label no other system has."""
    key = canonical(name, profile)
    table = available()
    try:
        cls = _import(key, table[key])
    except RegistryError:
        raise
    except Exception as e:
        raise RegistryError(f"system {key!r} ({table[key]}) cannot be imported: {e}") from e
    if cls.group not in GROUPS:
        raise RegistryError(f"system {key!r} ({table[key]}) has group {cls.group!r}; use one of "
                            f"{', '.join(GROUPS)}")
    folded = {n.lower(): n for n in table}
    own = {cls.name} | ({label_for(cls, profile)} if profile in cls.profiles else set())
    for label in own:
        other = folded.get(str(label).lower())
        if other is not None and other != key:
            raise RegistryError(f"system {key!r} ({table[key]}) names its rows {label!r}, "
                                f"which is the system {other!r}; rename one of them")
    return cls
