"""Run profiles: which datasets, seeds and protocol options a table uses.

Each system carries its own per-profile settings (`System.profiles`, with a "default"
entry for profiles it does not list); a profile here only says what data it runs on, so
plugins need no change to the harness. Which settings a table has is said by the setting
specs (protocols.settings), which systems exist by the registry.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bench.registry import BUILTIN
from protocols.options import ProtocolOptions

# the rows of the paper's Table 3; "2nd-Finetune" appears in no other table by default
FEWSHOT_SYSTEMS = ("TALLRec", "2nd-Finetune", "MoLoRec")
FEWSHOT_ONLY = ("2nd-Finetune",)
DEFAULT_SYSTEMS = tuple(n for n in BUILTIN if n not in FEWSHOT_ONLY)  # in row order


@dataclass(frozen=True)
class Profile:
    name: str
    datasets: tuple[str, ...]
    seeds: tuple[int, ...]
    systems: tuple[str, ...] = DEFAULT_SYSTEMS
    protocol: ProtocolOptions = field(default_factory=ProtocolOptions)
    # one candidate file per dataset and setting, whatever the system seeds: every seed of
    # every system ranks the same candidates
    protocol_seed: int = 0
    note: str = ""
    # a table's own defaults where they differ (table -> systems / datasets)
    table_systems: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {"fewshot": FEWSHOT_SYSTEMS})
    table_datasets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # dataset -> the datasets its domain-general corpus comes from (protocols.general_corpus;
    # absent: the seeded `protocol.general_fraction` of its own users)
    general_from: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # memory (GiB) one local worker process may need; set where `--jobs` was measured
    # faster than one process: `run` then defaults to as many workers as cores and memory
    # allow (`local_jobs`). None: one process unless --jobs says otherwise
    jobs_memory_gib: float | None = None

    def local_jobs(self, cores: int | None = None, memory_gib: float | None = None) -> int:
        """Local worker processes for a run without --jobs: 1 without `jobs_memory_gib`,
        else one per core, at most one per `jobs_memory_gib` of memory (this machine's
        when not given; unknown memory: 1)."""
        if self.jobs_memory_gib is None:
            return 1
        cores = cpu_cores() if cores is None else cores
        memory_gib = memory_gib_total() if memory_gib is None else memory_gib
        if memory_gib is None:
            return 1
        return max(1, min(cores, int(memory_gib // self.jobs_memory_gib)))

    def systems_for(self, table: str) -> tuple[str, ...]:
        return tuple(self.table_systems.get(table, self.systems))

    def datasets_for(self, table: str) -> tuple[str, ...]:
        return tuple(self.table_datasets.get(table, self.datasets))

    def datasets_to_download(self, downloadable: Sequence[str]) -> list[str]:
        """Every dataset this profile's tables read, general corpora included, that
        `bench data download` fetches (embedded ones need nothing), in a stable order."""
        wanted = [*self.datasets, *(d for ds in self.table_datasets.values() for d in ds),
                  *(d for ds in self.general_from.values() for d in ds)]
        known = set(downloadable)
        return [d for d in dict.fromkeys(wanted) if d in known]


# The paper's domain-general corpora (its Section 4.1.1 and Table 4): the Amazon 2014
# 5-core categories of Table 4 (whose counts they match) for the three Amazon targets, and
# MovieLens-10M for MovieLens-1M. The text says "seven" categories; Table 4 lists eight.
AMAZON_GENERAL = tuple(f"amazon2014-{c}" for c in (
    "Clothing_Shoes_and_Jewelry", "Cell_Phones_and_Accessories", "Grocery_and_Gourmet_Food",
    "Health_and_Personal_Care", "Home_and_Kitchen", "Pet_Supplies",
    "Tools_and_Home_Improvement", "Video_Games"))
PAPER_GENERAL = {
    **{f"amazon2014-{t}": AMAZON_GENERAL
       for t in ("Beauty", "Toys_and_Games", "Sports_and_Outdoors")},
    "ml-1m": ("ml-10m",),
}

PROFILES = {
    "smoke": Profile(
        "smoke", ("ml-100k",), (0,), protocol=ProtocolOptions(max_users=80, cold_fraction=0.2),
        note="the cpu path cut down (80 users per part, tiny models) for end-to-end tests"),
    "cpu": Profile(
        "cpu", ("ml-100k",), (0,),
        # the whole warm table ran 1.15x faster with --jobs 2 than in one process on 2
        # cores; two workers held 12.2 GB at most (BENCHMARKS.md, "Parallel cells")
        jobs_memory_gib=8,
        note="embedded MovieLens-100K, sized for a 2-core machine"),
    "paper": Profile(
        "paper",
        ("amazon2014-Beauty", "amazon2014-Toys_and_Games", "amazon2014-Sports_and_Outdoors",
         "ml-1m"),
        (0, 1, 2),
        # the paper's Table 3 is MovieLens-1M only
        table_datasets={"fewshot": ("ml-1m",)},
        general_from=PAPER_GENERAL,
        note="the paper's datasets and settings, for GPU machines (download first)"),
}


def cpu_cores() -> int:
    """The cores this process may run on (a container's or a batch job's share)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def memory_gib_total() -> float | None:
    """Physical memory of this machine in GiB; None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (AttributeError, OSError, ValueError):
        return None


def get(name: str) -> Profile:
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r}; use one of {', '.join(PROFILES)}")
    return PROFILES[name]
