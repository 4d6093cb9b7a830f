"""Datasets: each one `DatasetSpec`, registered like systems.

A spec is the one place that knows a dataset's loader (a 'module:function' imported only
when used), where its files live and which files `bench data download` fetches. A family
(`amazon2014-{part}`) covers every name with its prefix; `parts` lists the members that
can be downloaded. Adding a dataset is one spec (here, or in a plugin under the
entry-point group `molorec_bench.datasets`) plus its test.

All loaders produce one normalized `Interactions`. Embedded default: `ml-100k`, the
MovieLens-100K atomic files inside the installed `recbole` package, so nothing is
downloaded. Any other directory of RecBole atomic files loads with `--data-path`.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from protocols.errors import OptionError, ProtocolError
from protocols.interactions import Interactions
from protocols.registry import Registry, did_you_mean, import_target, spec_of, suggest

ENTRY_POINT_GROUP = "molorec_bench.datasets"
PART = "{part}"
ATOMIC = "protocols.atomic:load_atomic"


@dataclass(frozen=True)
class RemoteFile:
    url: str
    sha256: str | None = None
    md5: str | None = None
    extract: bool = False  # zip archive: unpack into the dataset folder

    @property
    def filename(self) -> str:
        return PurePosixPath(urlsplit(self.url).path).name


@dataclass(frozen=True)
class Source:
    """What `bench data download NAME` fetches."""

    name: str
    files: tuple[RemoteFile, ...]
    homepage: str


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # "ml-1m", or a family "amazon2014-{part}"
    loader: str = ATOMIC  # 'module:function', called as loader(directory, name or part)
    files: tuple[RemoteFile, ...] = ()  # the download entry; urls may hold {part}
    homepage: str = ""
    parts: tuple[str, ...] = ()  # a family's members that can be downloaded
    root: str | None = None  # 'module:function' -> a fixed directory (embedded data)
    part_label: str = "part"  # what a family's part is, for messages: amazon2014-<Category>
    # user ids shared across datasets: a name for the id space (Amazon reviewer ids are one
    # space over every category and both crawls); None: ids that number this dataset's
    # users only (MovieLens), so the same id in another dataset is another person
    user_id_space: str | None = None

    @property
    def family(self) -> bool:
        return PART in self.name

    @property
    def prefix(self) -> str:
        return self.name.split(PART)[0]

    @property
    def shown(self) -> str:
        return self.name.replace(PART, f"<{self.part_label}>")

    def names(self) -> list[str]:
        """The concrete names it answers to by name (a family: its listed parts)."""
        return [self.name.replace(PART, p) for p in self.parts] if self.family else [self.name]

    def part(self, name: str) -> str:
        """What the loader and the urls are given for `name`."""
        return name[len(self.prefix):] if self.family else name

    def directory(self, name: str) -> Path:
        """Where `name`'s files live unless `--data-path` says otherwise."""
        return Path(import_target(self.root)()) if self.root else data_home() / name

    def load(self, directory: Path, name: str) -> Interactions:
        return import_target(self.loader)(Path(directory), self.part(name))

    def source(self, name: str) -> Source:
        files = tuple(replace(f, url=f.url.replace(PART, self.part(name))) for f in self.files)
        return Source(name, files, self.homepage)


def embedded_ml100k() -> Path:
    """The ML-100K copy that ships inside the recbole package."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise ProtocolError("the embedded dataset needs the 'recbole' package installed")
    return Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"


def data_home() -> Path:
    """Where downloaded datasets live: $MOLOREC_BENCH_DATA or ~/.cache/molorec-bench/data."""
    env = os.environ.get("MOLOREC_BENCH_DATA")
    return Path(env) if env else Path.home() / ".cache" / "molorec-bench" / "data"


_GROUPLENS = "https://files.grouplens.org/datasets/movielens"
_SNAP = "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles"
# The paper's seven general + three target e-commerce domains (Amazon 2014 5-core).
AMAZON2014_CATEGORIES = (
    "Beauty", "Toys_and_Games", "Sports_and_Outdoors", "Clothing_Shoes_and_Jewelry",
    "Cell_Phones_and_Accessories", "Grocery_and_Gourmet_Food", "Health_and_Personal_Care",
    "Home_and_Kitchen", "Pet_Supplies", "Tools_and_Home_Improvement", "Video_Games",
)
# Checksums: ml-1m carries its published sha256 (TensorFlow Datasets' url_checksums/
# movielens.txt) and both MovieLens zips GroupLens' published md5 (the `<zip>.md5` files
# beside them). None is published for ml-10m or the Amazon 2014 files: the first download
# records theirs (trust on first use, see protocols.download).
BUILTIN: dict[str, DatasetSpec | str] = {
    "ml-100k": DatasetSpec("ml-100k", root="protocols.datasets:embedded_ml100k"),
    "ml-1m": DatasetSpec(
        "ml-1m", "protocols.raw_formats:load_movielens_dat", (RemoteFile(
            f"{_GROUPLENS}/ml-1m.zip",
            sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
            md5="c4d9eecfca2ab87c1945afe126590906", extract=True),),
        "https://grouplens.org/datasets/movielens/1m/"),
    "ml-10m": DatasetSpec(
        "ml-10m", "protocols.raw_formats:load_movielens_dat", (RemoteFile(
            f"{_GROUPLENS}/ml-10m.zip", md5="ce571fd55effeba0271552578f2648bd",
            extract=True),),
        "https://grouplens.org/datasets/movielens/10m/"),
    "amazon2014-{part}": DatasetSpec(
        "amazon2014-{part}", "protocols.raw_formats:load_amazon2014",
        (RemoteFile(f"{_SNAP}/reviews_{PART}_5.json.gz"),
         RemoteFile(f"{_SNAP}/meta_{PART}.json.gz")),
        "https://jmcauley.ucsd.edu/data/amazon/index_2014.html", AMAZON2014_CATEGORIES,
        part_label="Category", user_id_space="amazon"),
    "amazon2018-{part}": DatasetSpec("amazon2018-{part}", "protocols.raw_formats:load_amazon2018",
                                     part_label="Category", user_id_space="amazon"),
}


DATASETS: Registry[DatasetSpec] = Registry("dataset", ENTRY_POINT_GROUP, BUILTIN,
                                           spec_of("dataset", DatasetSpec),
                                           unknown=ProtocolError)


def _specs() -> list[DatasetSpec]:
    return list(DATASETS.items().values())


def known() -> list[str]:
    """Every name a dataset answers to, a family as its pattern (amazon2014-<Category>)."""
    return [n for s in _specs() for n in ([s.shown] if s.family else s.names())]


def lookup(name: str, fold_case: bool = False) -> tuple[DatasetSpec, str] | None:
    """(spec, canonical name) for `name`: a registered name (in any case with
    `fold_case`), then a family prefix; None if no spec covers it."""
    specs = _specs()
    fold = str.lower if fold_case else str
    by_name = {fold(n): (s, n) for s in specs for n in s.names()}
    if fold(name) in by_name:
        return by_name[fold(name)]
    for s in specs:
        if s.family and fold(name).startswith(fold(s.prefix)) and len(name) > len(s.prefix):
            return s, s.prefix + name[len(s.prefix):]
    return None


def canonical(name: str) -> str:
    """The registered spelling of a dataset name typed in any case (`ML-100K` is
    `ml-100k`, so it reuses the same protocol and cells); a name no spec covers (a
    --data-path dataset) is kept as typed."""
    found = lookup(name, fold_case=True)
    return found[1] if found is not None else name


def canonical_sources(names: Sequence[str], paths: Mapping[str, str]
                      ) -> tuple[tuple[str, ...], dict[str, str]]:
    """`--general-from` names and their paths (general_corpus.parse) in the registered
    spelling; one dataset named twice in two cases is refused."""
    fixed = tuple(canonical(n) for n in names)
    for n, c in zip(names, fixed, strict=True):
        if fixed.count(c) > 1:
            raise OptionError(f"--general-from names {c!r} more than once (as {n!r})")
    return fixed, {canonical(n): p for n, p in paths.items()}


def unknown(name: str) -> ProtocolError:
    concrete = [n for s in _specs() if not s.family for n in s.names()]
    return ProtocolError(f"unknown dataset {name!r}.{did_you_mean(suggest(name, concrete, 1))} "
                         f"Known: {', '.join(known())}, or any name with --data-path DIR of "
                         "RecBole atomic files")


def user_id_space(dataset: str) -> str | None:
    """The id space `dataset`'s user ids belong to (None: its own; unregistered names too)."""
    found = lookup(dataset)
    return found[0].user_id_space if found is not None else None


def source_root(dataset: str, data_path: str | Path | None) -> Path:
    """The directory a build of `dataset` reads."""
    if data_path:
        return Path(data_path)
    found = lookup(dataset)
    if found is None:
        raise unknown(dataset)
    spec, name = found
    return spec.directory(name)


def source_files(dataset: str, data_path: str | Path | None) -> list[Path]:
    """The raw files a build reads (their hashes go into the manifest)."""
    root = source_root(dataset, data_path)
    skip = (".part", ".zip", ".tmp")
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and not p.name.endswith(skip) and p.name != "checksums.json")


def load_dataset(dataset: str, data_path: str | Path | None = None) -> Interactions:
    """Load a dataset by name; `data_path` points at its directory when not the default.
    A name no spec covers loads as RecBole atomic files from `data_path`."""
    found = lookup(dataset)
    if found is None:
        if data_path is None:
            raise unknown(dataset)
        return import_target(ATOMIC)(Path(data_path), dataset)
    spec, name = found
    return spec.load(source_root(name, data_path), name)


def download_source(name: str) -> Source | None:
    """What `bench data download` fetches for the canonical `name` (None: nothing)."""
    found = lookup(name)
    if found is None or found[1] not in downloadable():
        return None
    spec, canonical = found
    return spec.source(canonical)


def downloadable() -> list[str]:
    """Every name `bench data download` knows."""
    return [n for s in _specs() if s.files for n in s.names()]
