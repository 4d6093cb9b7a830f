"""Settings (warm, cold, few-shot...): each one `SettingSpec`, registered like systems.

A spec is the one place that knows a setting's split function, the table it is a column
group of, and what the table caption says about it. Adding a setting is one spec (here,
or in a plugin under the entry-point group `molorec_bench.settings`) plus its test; the
command line, the runner and the tables read the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from protocols import splits
from protocols.errors import ProtocolError
from protocols.interactions import Interactions
from protocols.options import ProtocolOptions
from protocols.registry import Registry, spec_of

ENTRY_POINT_GROUP = "molorec_bench.settings"
SplitFn = Callable[[Interactions, int, ProtocolOptions], splits.Split]


@dataclass(frozen=True)
class SettingSpec:
    name: str  # what `--setting` and the protocol manifest say
    table: str  # the `--table` whose columns it makes (tables group settings)
    split: SplitFn  # (target-domain interactions, seed, options) -> the split
    title: str  # the caption's name for it: "Table <table>: <title>."
    protocol: str  # the caption's protocol sentence (ends with ';')
    column: str = "{dataset}"  # a column's label under this setting
    paper_table: str | None = None  # the paper's table it mirrors (reports.paper_reference)
    # (scenario, share), e.g. ("Cold-Start", "10%"): a table whose settings all have one is
    # laid out as the paper's Table 3, settings as rows and systems as columns
    row: tuple[str, str] | None = None
    metrics: tuple[str, ...] = ("NDCG@1", "NDCG@3")  # what its table shows
    # the split code's version: raise it when a change to `split` changes what it writes,
    # so a protocol built by the old code is rebuilt (the manifest's `split_version`)
    version: int = 1


def _warm(inter: Interactions, seed: int, options: ProtocolOptions) -> splits.Split:
    return splits.warm(inter)


def _cold(inter: Interactions, seed: int, options: ProtocolOptions) -> splits.Split:
    return splits.cold(inter, options.cold_fraction, seed, options.sampled_negatives)


def _fewshot(inter: Interactions, seed: int, options: ProtocolOptions, *,
             percent: int) -> splits.Split:
    return splits.fewshot(inter, percent, seed)


WARM = SettingSpec(
    "warm", "warm", _warm, "warm-start (the paper's Table 1 setting)",
    "Protocol: leave-one-out split (last interaction = test, second-to-last = validation);",
    paper_table="table1")
# 2: the test positive follows every training and validation event of its user
COLD_VERSION = 2
COLD = SettingSpec(
    "cold", "cold", _cold, "new-item / cold-start (the paper's Table 2 setting)",
    "Protocol: new-item split (a seeded share of items is removed from all training and "
    "validation data; test positives and negatives are drawn from those unseen items; a test "
    "user's training and validation events all precede the positive, the last of them = "
    "validation);",
    paper_table="table2", version=COLD_VERSION)


def _fewshot_cold(inter: Interactions, seed: int, options: ProtocolOptions, *,
                  percent: int) -> splits.Split:
    return splits.fewshot_cold(inter, percent, seed, options.cold_fraction,
                               options.sampled_negatives)


FEWSHOT_TITLE = "few-shot training (the paper's Table 3 setting)"
FEWSHOT_METRICS = ("NDCG@1",)  # the paper's Table 3 reports NDCG@1 only
# 2: the share is of what each system trains on in the full setting, its caps included
# (molorec.instructions); the files are as in version 1, the cells are not
FEWSHOT_VERSION = 2


def fewshot(percent: int) -> SettingSpec:
    """Warm, training on a seeded, nested `percent` of the training samples."""
    return SettingSpec(
        f"fewshot-{percent}", "fewshot", partial(_fewshot, percent=percent), FEWSHOT_TITLE,
        "Protocol: Warm-Start rows: leave-one-out split, each system training on a seeded, "
        "nested share of the examples it trains on in warm (validation and test as in warm);",
        column=f"{{dataset}} {percent}%", paper_table="table3",
        row=("Warm-Start", f"{percent}%"), metrics=FEWSHOT_METRICS, version=FEWSHOT_VERSION)


def fewshot_cold(percent: int) -> SettingSpec:
    """Cold (new-item), training on a seeded, nested `percent` of its training samples."""
    return SettingSpec(
        f"fewshot-cold-{percent}", "fewshot", partial(_fewshot_cold, percent=percent),
        FEWSHOT_TITLE,
        "Cold-Start rows: the new-item split of the cold table, each system's training examples "
        "thinned the same seeded, nested way (validation and test as in cold);",
        column=f"{{dataset}} cold {percent}%", paper_table="table3",
        row=("Cold-Start", f"{percent}%"), metrics=FEWSHOT_METRICS,
        version=max(COLD_VERSION, FEWSHOT_VERSION))


BUILTIN: dict[str, SettingSpec | str] = {
    "warm": WARM, "cold": COLD,
    **{f"fewshot-{p}": fewshot(p) for p in (10, 20, 30)},
    **{f"fewshot-cold-{p}": fewshot_cold(p) for p in (10, 20, 30)},
}


SETTINGS: Registry[SettingSpec] = Registry("setting", ENTRY_POINT_GROUP, BUILTIN,
                                           spec_of("setting", SettingSpec),
                                           unknown=ProtocolError)


def get(name: str) -> SettingSpec:
    """The spec registered as `name` (case-insensitive; unknown names get suggestions)."""
    return SETTINGS.get(name, f"Known: {', '.join(names())}.")


def names() -> list[str]:
    return list(SETTINGS.available())


def tables() -> dict[str, tuple[str, ...]]:
    """Table name -> its settings, in registry order (the order of its columns)."""
    out: dict[str, tuple[str, ...]] = {}
    for spec in SETTINGS.items().values():
        out[spec.table] = (*out.get(spec.table, ()), spec.name)
    return out


def find(name: str) -> SettingSpec | None:
    """The spec of a setting a stored cell names, or None if it is not registered."""
    found = SETTINGS.find(name)
    return SETTINGS.load(found) if found is not None else None
