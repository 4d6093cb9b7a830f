"""Which systems exist: built-ins plus plugins from the `molorec_bench.systems` entry points
(the generic protocols.registry, as settings and datasets are).

Entries are 'module:Class' strings imported only when a system is used, so listing
systems never imports torch-heavy modules. A name is matched case-insensitively to one
canonical name; a table's row label (e.g. `TinyQwen2`, the `Backbone` system's label) also
works, looked up lazily only when no name matches. Plugins that clash with another name
are refused, as are classes that are not valid systems. Registry order is row order.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from bench.api import GROUPS, System
from protocols.registry import (
    Registry,
    RegistryError,
    UnknownName,
    did_you_mean,
    import_target,
    suggest,
)

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "RegistryError", "UnknownSystem", "available",
           "canonical", "label_for", "refused", "resolve"]

ENTRY_POINT_GROUP = "molorec_bench.systems"

# Row order within a group is this order (the paper's), then plugins by name.
BUILTIN: dict[str, str] = {
    "Random": "bench.reference:Random",
    "Pop": "bench.reference:Pop",
    "BPR-MF": "baselines.bpr:BPRMF",
    "GRU4Rec": "baselines.gru4rec:GRU4Rec",
    "SASRec": "baselines.sasrec:SASRec",
    "FMLP-Rec": "baselines.fmlp:FMLPRec",
    "UniSRec": "baselines.unisrec:UniSRec",
    "VQ-Rec": "baselines.vqrec:VQRec",
    "Backbone": "molorec.systems:Backbone",
    "RecFormer": "baselines.recformer:RecFormer",
    "P5": "baselines.p5:P5",
    "TALLRec": "molorec.systems:TALLRec",
    "RecLoRA": "molorec.reclora:RecLoRA",
    "MoLoRec-G": "molorec.systems:MoLoRecG",
    "MoLoRec-S": "molorec.systems:MoLoRecS",
    "MoLoRec": "molorec.systems:MoLoRec",
    # the paper's Table 3 only (bench.profiles: the few-shot table's default rows); its
    # group places it among the LLM-based rows
    "2nd-Finetune": "molorec.finetune2:SecondFinetune",
}
HINT = "See `python -m bench list-systems`."


class UnknownSystem(UnknownName):
    """A name that is neither a registered system nor a row label."""


SYSTEMS: Registry[str] = Registry(
    "system", ENTRY_POINT_GROUP, BUILTIN, unknown=UnknownSystem,
    find_plugins=lambda group: entry_points(group=group))  # looked up here: tests patch it


def available() -> dict[str, str]:
    """Name -> 'module:Class' for built-ins and accepted plugins."""
    return SYSTEMS.available()


def refused() -> dict[str, str]:
    """Plugin entry points that were refused, with the reason."""
    return SYSTEMS.refused()


def label_for(cls: type[System], profile: str, config: dict | None = None) -> str:
    """The row label a system gets under `profile` (with `config`, the one a run gives
    it, when not the profile's), without constructing it (a label depends only on the
    config; __init__ may load models)."""
    try:
        obj = object.__new__(cls)
        obj.config = cls.config_for(profile) if config is None else config
        obj.seed, obj.workdir = 0, None
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
            if cls.has_config(prof):
                out.setdefault(label_for(cls, prof), name)
    return out


def canonical(name: str, profile: str | None = None) -> str:
    """The registered name `name` means: exact, case-insensitive, or a row label."""
    found = SYSTEMS.find(name)
    if found is not None:
        return found
    table = available()
    close = suggest(name, table)
    if not close:  # only now import the systems, to learn their row labels
        labels = _labels(table, profile)
        folded_labels = {lab.lower(): n for lab, n in labels.items()}
        if name.lower() in folded_labels:
            return folded_labels[name.lower()]
        close = [f"{lab} (the row label of {labels[lab]})" if lab != labels[lab] else lab
                 for lab in suggest(name, labels)]
    raise UnknownSystem(f"unknown system {name!r}.{did_you_mean(close)} {HINT}")


def _import(name: str, target: str) -> type[System]:
    cls = import_target(target)
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
    own = {cls.name} | ({label_for(cls, profile)} if profile and cls.has_config(profile)
                        else set())
    for label in own:
        other = folded.get(str(label).lower())
        if other is not None and other != key:
            raise RegistryError(f"system {key!r} ({table[key]}) names its rows {label!r}, "
                                f"which is the system {other!r}; rename one of them")
    return cls


def rank(cls: type[System]) -> int:
    """The class's position in registry order (row order within a group); classes not
    registered come last."""
    targets = list(available().values())
    target = f"{cls.__module__}:{cls.__qualname__}"
    return targets.index(target) if target in targets else len(targets)
