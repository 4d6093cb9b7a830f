"""Strict parsing: a malformed input line is an error naming the file and line, never a
shifted column, a cut title, an overwritten id or a raw decoding traceback; repeats a
rule cleans are counted in the manifest."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from protocols.atomic import load_atomic
from protocols.build import build_protocol
from protocols.errors import ProtocolError
from protocols.raw_formats import load_amazon2014, load_movielens_dat
from tests.conftest import write_atomic_dataset

INTER = ["u1\ti1\t5\t100", "u1\ti2\t4\t101", "u2\ti1\t3\t102", "u2\ti3\t3\t103"]
ITEMS = ["i1\tHeat", "i2\tUp", "i3\tAlien"]


def _atomic(tmp_path, inter=INTER, items=ITEMS):
    return write_atomic_dataset(tmp_path / "toy", inter, items)


@pytest.mark.parametrize("which, lines, line, match", [
    # a row with more fields than the header: its item id used to become a timestamp
    ("inter", [*INTER[:2], "u2\t7\ti1\t3\t102", *INTER[3:]], 4, "5 tab-separated fields"),
    ("inter", [*INTER[:1], "u1\ti2\t4", *INTER[2:]], 3, "3 tab-separated fields"),
    # a title with a tab, or with a line break, used to be cut short
    ("item", ["i1\tHeat", "i2\tUp\tand away", "i3\tAlien"], 3, "3 tab-separated fields"),
    ("item", ["i1\tHeat", "i2\tUp and\naway", "i3\tAlien"], 4, "1 tab-separated fields"),
    ("item", ["i1\tHeat", "i2\tUp and\raway", "i3\tAlien"], 3, "carriage return"),
    # a repeated id with another title used to overwrite the first title silently
    ("item", [*ITEMS, "i1\tHeat 2"], 5, r"item_id 'i1' again, with another title \(first "
                                        r"at line 2\)"),
    ("item", ["\tNo id", *ITEMS], 2, "empty or missing field"),
])
def test_malformed_atomic_lines(tmp_path, which, lines, line, match):
    root = _atomic(tmp_path, *( (lines, ITEMS) if which == "inter" else (INTER, lines)))
    with pytest.raises(ProtocolError, match=match) as e:
        load_atomic(root, "toy")
    assert e.value.path.endswith(f"toy.{which}") and e.value.line == line


@pytest.mark.parametrize("which", ["inter", "item"])
def test_non_utf8_byte_is_named(tmp_path, which):
    root = _atomic(tmp_path)
    f = root / f"toy.{which}"
    lines = f.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"\t", b"\xe9\t", 1)
    f.write_bytes(b"\n".join(lines))
    with pytest.raises(ProtocolError, match="not UTF-8: byte 0xe9") as e:
        load_atomic(root, "toy")
    assert e.value.line == 3 and e.value.path.endswith(f"toy.{which}")


def test_crlf_files_and_identical_repeats_are_accepted_and_counted(tmp_path):
    root = _atomic(tmp_path, items=[*ITEMS, "i2\tUp"])
    for f in root.iterdir():
        f.write_bytes(f.read_bytes().replace(b"\n", b"\r\n"))
    data = load_atomic(root, "toy")
    assert data.titles == {"i1": "Heat", "i2": "Up", "i3": "Alien"}
    assert data.stats == {"repeated_item_rows": 1}
    assert data.timestamp.tolist() == [100, 101, 102, 103]


def test_repeats_are_counted_in_the_manifest_and_valid_files_keep_their_manifest(tmp_path):
    rng = np.random.default_rng(0)
    inter = [f"u{u}\ti{i}\t5\t{t}" for u in range(40)
             for t, i in enumerate(rng.choice(60, 8, replace=False))]
    items = [f"i{i}\tTitle {i}" for i in range(60)]
    root = write_atomic_dataset(tmp_path / "toy", inter, items)
    m = build_protocol("toy", "warm", 0, tmp_path / "a", data_path=root, kcore=2)
    assert "repeated_item_rows" not in m["counts"]
    write_atomic_dataset(tmp_path / "toy", inter, [*items, "i7\tTitle 7"])
    m2 = build_protocol("toy", "warm", 0, tmp_path / "b", data_path=root, kcore=2)
    assert m2["counts"]["repeated_item_rows"] == 1
    assert m2["files"] == m["files"]


def test_movielens_repeated_movie_id(tmp_path):
    (tmp_path / "ratings.dat").write_bytes(b"1::10::5::1\n1::20::3::2\n")
    (tmp_path / "movies.dat").write_bytes(b"10::Heat (1995)::A\n20::Up::B\n10::Heat (1995)::A\n")
    assert load_movielens_dat(tmp_path, "ml-1m").stats == {"repeated_item_rows": 1}
    (tmp_path / "movies.dat").write_bytes(b"10::Heat (1995)::A\n20::Up::B\n10::Other::A\n")
    with pytest.raises(ProtocolError, match="MovieID 10 again.*line 1") as e:
        load_movielens_dat(tmp_path, "ml-1m")
    assert e.value.line == 3


def test_amazon_invalid_utf8_and_repeated_records_are_counted(tmp_path):
    review = {"reviewerID": "U1", "asin": "B1", "unixReviewTime": 7}
    with gzip.open(tmp_path / "reviews_Beauty_5.json.gz", "wb") as f:
        f.write((json.dumps(review) + "\n").encode())
    with gzip.open(tmp_path / "meta_Beauty.json.gz", "wb") as f:
        f.write(b"{'asin': 'B1', 'title': 'Caf\xe9'}\n{'asin': 'B1', 'title': 'Cafe'}\n")
    data = load_amazon2014(tmp_path, "Beauty")
    assert data.titles == {"B1": "Cafe"}
    assert data.stats == {"lines_not_utf8": 1, "repeated_meta_records": 1}
