"""RecBole atomic files (`<name>.inter` + `<name>.item`), parsed strictly.

Atomic files are UTF-8 and tab-separated; every line must have the header's number of
fields, so a stray tab, a line break inside a title, a missing field or a non-UTF-8 byte
is an error naming the file and line, never a shifted column or a cut title. The
embedded ml-100k and any `--data-path` directory load with `load_atomic`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from protocols.errors import ProtocolError
from protocols.interactions import Interactions

CHUNK = 1 << 24  # bytes per block when checking a file's lines


def _check_block(path: Path, block: bytes, first_line: int, n_fields: int,
                 blank: list[int]) -> None:
    """Check whole lines (block ends with a newline) starting at file line first_line."""
    try:
        block.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + block.count(b"\n", 0, e.start)
        raise ProtocolError(f"not UTF-8: byte 0x{block[e.start]:02x}; atomic files are UTF-8, "
                            "convert it (e.g. `iconv -f latin1 -t utf-8`)", path, line) from None
    arr = np.frombuffer(block, dtype=np.uint8)
    nl = np.flatnonzero(arr == 10)
    cr = np.flatnonzero(arr == 13)
    lone = cr[arr[cr + 1] != 10]  # a CR not ending its line would start a new row in pandas
    if len(lone):
        line = first_line + int(np.searchsorted(nl, lone[0]))
        raise ProtocolError("carriage return inside a line (a line break inside a field?)",
                            path, line)
    tabs = np.diff(np.concatenate([[0], np.searchsorted(np.flatnonzero(arr == 9), nl)]))
    starts = np.concatenate([[0], nl[:-1] + 1])
    lengths = nl - starts - np.isin(nl - 1, cr)
    empty = lengths == 0
    blank += (first_line + np.flatnonzero(empty)).tolist()
    bad = np.flatnonzero(~empty & (tabs != n_fields - 1))
    if len(bad):
        got = int(tabs[bad[0]]) + 1
        why = ("a tab inside a field?" if got > n_fields
               else "a line break inside a field, or a missing field?")
        raise ProtocolError(f"{got} tab-separated fields, the header has {n_fields} ({why})",
                            path, first_line + int(bad[0]))


def _check_lines(path: Path, n_fields: int) -> list[int]:
    """Before pandas reads a tab-separated file: every line is UTF-8 and has the header's
    number of fields (so a stray tab or line break cannot shift columns). Returns the
    numbers of blank lines, which pandas skips, to map rows back to lines."""
    blank: list[int] = []
    line, carry = 1, b""
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            block = carry + block
            cut = block.rfind(b"\n") + 1
            carry = block[cut:]
            if cut:
                _check_block(path, block[:cut], line, n_fields, blank)
                line += block.count(b"\n", 0, cut)
    if carry:
        _check_block(path, carry + b"\n", line, n_fields, blank)
    return blank


def _line_of(row: int, blank: list[int]) -> int:
    """The file line of data row `row` (0-based; the header is line 1)."""
    line = row + 2
    for b in blank:
        if b <= line:
            line += 1
    return line


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


def _read_tsv(path: Path, usecols: list[str], dtype: dict | type = str
              ) -> tuple[pd.DataFrame, list[int]]:
    """Tab-separated columns of a checked file (ids stay strings or categories of strings),
    and the blank lines pandas skipped (see _line_of)."""
    header = _header(path)
    blank = _check_lines(path, len(header))
    try:
        return pd.read_csv(path, sep="\t", usecols=usecols, dtype=dtype,
                           quoting=csv.QUOTE_NONE, keep_default_na=False, na_values=[""],
                           engine="c", encoding="utf-8"), blank
    except pd.errors.ParserError as e:
        raise ProtocolError(f"malformed file: {str(e).strip()}", path) from None
    except ValueError as e:  # a non-numeric value in a numeric column: find its line
        for col, kind in (dtype.items() if isinstance(dtype, dict) else []):
            if kind != "float64":
                continue
            raw = pd.read_csv(path, sep="\t", usecols=[col], dtype=str, keep_default_na=False,
                              quoting=csv.QUOTE_NONE)[col]
            bad = pd.to_numeric(raw, errors="coerce").isna() & (raw != "")
            if bad.any():
                row = int(np.argmax(bad.to_numpy()))
                raise ProtocolError(f"{col} value {raw.iat[row]!r} is not a number",
                                    path, _line_of(row, blank)) from None
        raise ProtocolError(f"cannot parse: {e}", path) from None


def _header(path: Path) -> list[str]:
    try:
        with open(path, "rb") as f:
            first = f.readline()
    except FileNotFoundError:
        raise ProtocolError("file not found", path) from None
    try:
        return first.decode("utf-8").rstrip("\r\n").split("\t")
    except UnicodeDecodeError:
        raise ProtocolError("header is not UTF-8; atomic files are UTF-8", path, 1) from None


def _first_empty(df: pd.DataFrame, col: str) -> int | None:
    empty = (df[col].isna() | (df[col] == "")).to_numpy()
    return int(np.argmax(empty)) if empty.any() else None


def _item_titles(path: Path) -> tuple[dict[str, str], int]:
    """item id -> title from a .item file, and the number of repeated identical rows; a
    repeated id with another title is an error naming both lines."""
    header = _header(path)
    ticol = _title_field(header)
    if ticol is None:
        raise ProtocolError(f"no title column in {header}", path, 1)
    icol = _field(header, "item_id", path)
    idf, blank = _read_tsv(path, [icol, ticol])
    if (row := _first_empty(idf, icol)) is not None:
        raise ProtocolError(f"empty or missing field {icol!r}", path, _line_of(row, blank))
    ids, titles = idf[icol], idf[ticol].fillna("")
    repeated = ids.duplicated(keep="first")
    if repeated.any():
        first_row = {}
        for row in np.flatnonzero(ids.duplicated(keep=False).to_numpy()):
            item = ids.iat[row]
            if item not in first_row:
                first_row[item] = row
            elif titles.iat[row] != titles.iat[first_row[item]]:
                raise ProtocolError(
                    f"item_id {item!r} again, with another title (first at line "
                    f"{_line_of(first_row[item], blank)}); ids must be unique", path,
                    _line_of(int(row), blank))
    keep = ~repeated
    out = dict(zip(ids[keep], idf[ticol][keep], strict=True))
    return out, int(repeated.sum())


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
    df, blank = _read_tsv(inter_path, [ucol, icol, tcol],
                          {ucol: "category", icol: "category", tcol: "float64"})
    ts = df[tcol].to_numpy(dtype=np.float64)
    for col in (ucol, icol, tcol):
        row = _first_empty(df, col) if col != tcol else (
            int(np.argmax(np.isnan(ts))) if np.isnan(ts).any() else None)
        if row is not None:
            raise ProtocolError(f"empty or missing field {col!r}", inter_path,
                                _line_of(row, blank))
    if not item_path.exists():
        raise ProtocolError("missing item file: titles are required", item_path)
    titles, repeated = _item_titles(item_path)
    inter = Interactions.from_columns(name, df[ucol], df[icol], ts, titles)
    if repeated:
        inter.stats["repeated_item_rows"] = repeated
    return inter
