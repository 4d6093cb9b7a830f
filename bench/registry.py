"""Which systems exist: built-ins plus plugins from the `molorec_bench.systems` entry points.

Entries are 'module:Class' strings imported only when a system is used, so listing
systems never imports torch-heavy modules.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points

from bench.api import System

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


class UnknownSystem(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


def available() -> dict[str, str]:
    """Name -> 'module:Class' for built-ins and installed plugins (plugins may not shadow)."""
    found = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def resolve(name: str) -> type[System]:
    """Import the class registered under `name`; unknown names get a suggestion."""
    table = available()
    if name not in table:
        lowered = {n.lower(): n for n in table}
        if name.lower() in lowered:
            name = lowered[name.lower()]
        else:
            close = difflib.get_close_matches(name, list(table), n=3, cutoff=0.5)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownSystem(f"unknown system {name!r}.{hint} "
                                "See `python -m bench list-systems`.")
    module, _, attr = table[name].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, System)):
        raise TypeError(f"{table[name]} is not a bench.api.System subclass")
    return cls
