"""Dataset registry: a name (and optional directory) to one normalized `Interactions`.

Embedded default: `ml-100k`, the MovieLens-100K atomic files inside the installed
`recbole` package, so nothing is downloaded. Any other directory of RecBole atomic files
(`<name>.inter` + `<name>.item`) loads with `--data-path`.
"""

from __future__ import annotations

import csv
import difflib
import importlib.util
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from protocols.errors import ProtocolError
from protocols.interactions import Interactions

KNOWN = ("ml-100k", "ml-1m", "ml-10m", "amazon2014-<Category>", "amazon2018-<Category>",
         "<any name> with --data-path DIR of RecBole atomic files")


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


def _bad_line_from_parser(err: Exception) -> int | None:
    m = re.search(r"line (\d+)", str(err))
    return int(m.group(1)) if m else None


def _field(header: list[str], base: str, path: Path) -> str:
    for col in header:
        if col.split(":")[0] == base:
            return col
    raise ProtocolError(f"missing column {base!r} (header has {header})", path, 1)


def _title_field(header: list[str]) -> str | None:
    for col in header:
        if "title" in col.split(":")[0].lower() or col.split(":")[0] in ("item_name", "name"):
            return col
    return None


def _read_tsv(path: Path, usecols: list[str], dtype: dict | type = str) -> pd.DataFrame:
    """Tab-separated columns; ids stay strings (or categories of strings)."""
    try:
        return pd.read_csv(path, sep="\t", usecols=usecols, dtype=dtype,
                           quoting=csv.QUOTE_NONE, keep_default_na=False, na_values=[""],
                           engine="c")
    except pd.errors.ParserError as e:
        raise ProtocolError(f"malformed line: {str(e).strip()}", path,
                            _bad_line_from_parser(e)) from None
    except ValueError as e:  # a non-numeric value in a numeric column: find its line
        for col, kind in (dtype.items() if isinstance(dtype, dict) else []):
            if kind != "float64":
                continue
            raw = pd.read_csv(path, sep="\t", usecols=[col], dtype=str, keep_default_na=False,
                              quoting=csv.QUOTE_NONE)[col]
            bad = pd.to_numeric(raw, errors="coerce").isna() & (raw != "")
            if bad.any():
                line = int(np.argmax(bad.to_numpy())) + 2
                raise ProtocolError(f"{col} value {raw.iat[line - 2]!r} is not a number",
                                    path, line) from None
        raise ProtocolError(f"cannot parse: {e}", path) from None


def _header(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\n").split("\t")
    except FileNotFoundError:
        raise ProtocolError("file not found", path) from None


def load_atomic(root: Path, name: str | None = None) -> Interactions:
    """Load `<name>.inter` and `<name>.item` (RecBole atomic files) from `root`."""
    root = Path(root)
    if not root.is_dir():
        raise ProtocolError("dataset directory not found", root)
    if name is None or not (root / f"{name}.inter").exists():
        inters = sorted(root.glob("*.inter"))
        if len(inters) != 1:
            raise ProtocolError(f"expected one .inter file, found {len(inters)}", root)
        name = inters[0].stem
    inter_path, item_path = root / f"{name}.inter", root / f"{name}.item"
    header = _header(inter_path)
    ucol, icol = _field(header, "user_id", inter_path), _field(header, "item_id", inter_path)
    tcol = _field(header, "timestamp", inter_path)
    df = _read_tsv(inter_path, [ucol, icol, tcol], {ucol: "category", icol: "category",
                                                     tcol: "float64"})
    for col in (ucol, icol):
        empty = (df[col].isna() | (df[col] == "")).to_numpy()
        if empty.any():
            line = int(np.argmax(empty)) + 2
            raise ProtocolError(f"empty or missing field {col!r}", inter_path, line)
    ts = df[tcol].to_numpy(dtype=np.float64)
    if np.isnan(ts).any():
        line = int(np.argmax(np.isnan(ts))) + 2
        raise ProtocolError(f"empty or missing field {tcol!r}", inter_path, line)
    titles: dict[str, str] = {}
    if item_path.exists():
        iheader = _header(item_path)
        ticol = _title_field(iheader)
        if ticol is None:
            raise ProtocolError(f"no title column in {iheader}", item_path, 1)
        idf = _read_tsv(item_path, [_field(iheader, "item_id", item_path), ticol])
        titles = dict(zip(idf.iloc[:, 0], idf.iloc[:, 1], strict=True))
    else:
        raise ProtocolError("missing item file: titles are required", item_path)
    return Interactions.from_columns(name, df[ucol], df[icol], ts, titles)


def source_files(dataset: str, data_path: str | Path | None) -> list[Path]:
    """The raw files a build reads (their hashes go into the manifest)."""
    root = Path(data_path) if data_path else _default_root(dataset)
    skip = (".part", ".zip", ".tmp")
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and not p.name.endswith(skip) and p.name != "checksums.json")


def _default_root(dataset: str) -> Path:
    if dataset == "ml-100k":
        return embedded_ml100k()
    return data_home() / dataset


def load_dataset(dataset: str, data_path: str | Path | None = None) -> Interactions:
    """Load a dataset by name; `data_path` points at its directory when not the default."""
    if dataset == "ml-100k" and data_path is None:
        return load_atomic(embedded_ml100k(), "ml-100k")
    root = Path(data_path) if data_path else _default_root(dataset)
    if dataset in ("ml-1m", "ml-10m"):
        from protocols.raw_formats import load_movielens_dat

        return load_movielens_dat(root, dataset)
    for prefix in ("amazon2014-", "amazon2018-"):
        if dataset.startswith(prefix):
            from protocols import raw_formats

            loader = (raw_formats.load_amazon2014 if prefix == "amazon2014-"
                      else raw_formats.load_amazon2018)
            return loader(root, dataset[len(prefix):])
    if data_path is None:
        close = difflib.get_close_matches(dataset, ["ml-100k", "ml-1m", "ml-10m"], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ProtocolError(f"unknown dataset {dataset!r}.{hint} Known: {', '.join(KNOWN)}")
    return load_atomic(root, dataset)
