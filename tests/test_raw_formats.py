"""Raw-format loaders on tiny fixture files written into tmp_path."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from protocols.errors import ProtocolError
from protocols.raw_formats import load_amazon2014, load_amazon2018, load_movielens_dat

RATINGS = b"1::10::5::978300760\n1::20::3::978302109\n2::10::4::978301968\n10::30::3.5::5\n"


def _events(data) -> list[tuple[str, str, float]]:
    return [(data.user_ids[u], data.item_ids[i], t)
            for u, i, t in zip(data.user, data.item, data.timestamp, strict=True)]


def test_movielens_1m_latin1_titles(tmp_path: Path):
    (tmp_path / "ratings.dat").write_bytes(RATINGS)
    movies = "10::Misérables, Les (1995)::Drama\n20::Toy Story (1995)::Animation\n" \
             "30::Heat (1995)::Action\n99::Never Rated (1990)::Drama\n"
    (tmp_path / "movies.dat").write_bytes(movies.encode("latin-1"))
    data = load_movielens_dat(tmp_path, "ml-1m")
    assert data.name == "ml-1m"
    assert _events(data) == [("1", "10", 978300760.0), ("1", "20", 978302109.0),
                             ("2", "10", 978301968.0), ("10", "30", 5.0)]
    assert list(data.user_ids) == ["1", "10", "2"]  # sorted string ids
    assert data.titles == {"10": "Misérables, Les (1995)", "20": "Toy Story (1995)",
                           "30": "Heat (1995)"}
    assert data.row.tolist() == [0, 1, 2, 3]
    assert data.timestamp.dtype == np.float64


def test_movielens_10m_utf8_in_zip_folder(tmp_path: Path):
    sub = tmp_path / "ml-10M100K"
    sub.mkdir()
    (sub / "ratings.dat").write_bytes(RATINGS)
    (sub / "movies.dat").write_bytes("10::Amélie (2001)::Comedy|Romance\n20::Up (2009)::A\n"
                                     "30::Heat (1995)::Action\n".encode())
    data = load_movielens_dat(tmp_path, "ml-10m")
    assert data.titles["10"] == "Amélie (2001)"
    assert len(data) == 4


@pytest.mark.parametrize("bad_line, number, match", [
    (b"3::10::4::978300000::extra", 3, "expected 4"),
    (b"3::10::4", 3, "expected 4"),
    (b"3::10::4::97830x000", 3, "timestamp is not an integer"),
    (b"3::10::4::9.5", 3, "timestamp is not an integer"),
    (b"3::abc::4::100", 3, "item is not an integer"),
])
def test_movielens_malformed_line_number(tmp_path: Path, bad_line: bytes, number: int,
                                         match: str):
    lines = RATINGS.splitlines()
    lines.insert(number - 1, bad_line)
    (tmp_path / "ratings.dat").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "movies.dat").write_bytes(b"10::A::B\n")
    with pytest.raises(ProtocolError, match=match) as info:
        load_movielens_dat(tmp_path, "ml-1m")
    assert info.value.line == number
    assert info.value.path == str(tmp_path / "ratings.dat")


def test_movielens_bad_first_line(tmp_path: Path):
    (tmp_path / "ratings.dat").write_bytes(b"1::10::5::1::9\n" + RATINGS)
    (tmp_path / "movies.dat").write_bytes(b"10::A::B\n")
    with pytest.raises(ProtocolError) as info:
        load_movielens_dat(tmp_path, "ml-1m")
    assert info.value.line == 1


def test_movielens_bad_movies_line(tmp_path: Path):
    (tmp_path / "ratings.dat").write_bytes(RATINGS)
    (tmp_path / "movies.dat").write_bytes(b"10::A::B\n20 Toy Story\n")
    with pytest.raises(ProtocolError, match="MovieID::Title::Genres") as info:
        load_movielens_dat(tmp_path, "ml-1m")
    assert info.value.line == 2 and info.value.path.endswith("movies.dat")


def test_missing_files_are_named(tmp_path: Path):
    with pytest.raises(ProtocolError, match="ratings.dat.*download ml-1m"):
        load_movielens_dat(tmp_path, "ml-1m")
    (tmp_path / "ratings.dat").write_bytes(RATINGS)
    with pytest.raises(ProtocolError, match="movies.dat"):
        load_movielens_dat(tmp_path, "ml-1m")
    with pytest.raises(ProtocolError, match="reviews_Beauty_5.json.gz"):
        load_amazon2014(tmp_path, "Beauty")


def _gz_lines(path: Path, lines: list[str]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def _review(user: str, asin: str, t: int) -> str:
    return json.dumps({"reviewerID": user, "asin": asin, "unixReviewTime": t,
                       "reviewText": "great", "overall": 5.0})


def test_amazon2014_python_literal_meta(tmp_path: Path):
    _gz_lines(tmp_path / "reviews_Beauty_5.json.gz", [
        _review("U2", "B1", 1400000000), _review("U1", "B2", 1300000000),
        _review("U1", "B3", 1300000001)])
    _gz_lines(tmp_path / "meta_Beauty.json.gz", [
        # Python repr, not JSON: single quotes, an apostrophe in a double-quoted string
        """{'asin': 'B1', 'title': "L'Oreal Men's Expert", 'salesRank': {'Beauty': 1}, """
        """'related': {'also_bought': ['B2']}, 'price': 9.5}""",
        "{'asin': 'B2', 'title': 'Plain \\'quoted\\' name', 'categories': [['Beauty']]}",
        "{'asin': 'B3', 'description': 'no title here'}",
        "{'asin': 'B9', 'title': 'not reviewed: not kept'}",
    ])
    data = load_amazon2014(tmp_path, "Beauty")
    assert data.name == "amazon2014-Beauty"
    assert _events(data) == [("U2", "B1", 1400000000.0), ("U1", "B2", 1300000000.0),
                             ("U1", "B3", 1300000001.0)]
    assert data.titles == {"B1": "L'Oreal Men's Expert", "B2": "Plain 'quoted' name"}


def test_amazon2014_meta_is_never_evaluated(tmp_path: Path):
    marker = tmp_path / "pwned"
    _gz_lines(tmp_path / "reviews_Beauty_5.json.gz", [_review("U1", "B1", 1)])
    _gz_lines(tmp_path / "meta_Beauty.json.gz", [
        "{'asin': 'B0', 'title': 'ok'}",
        f"{{'asin': 'B1', 'title': open({str(marker)!r}, 'w').write('x')}}",
    ])
    with pytest.raises(ProtocolError) as info:
        load_amazon2014(tmp_path, "Beauty")
    assert info.value.line == 2
    assert not marker.exists()


def test_amazon_bad_review_line_number(tmp_path: Path):
    _gz_lines(tmp_path / "reviews_Beauty_5.json.gz", [
        _review("U1", "B1", 1), _review("U1", "B2", 2),
        json.dumps({"reviewerID": "U2", "asin": "B1"}), _review("U3", "B1", 3)])
    _gz_lines(tmp_path / "meta_Beauty.json.gz", ["{'asin': 'B1', 'title': 't'}"])
    with pytest.raises(ProtocolError, match="unixReviewTime") as info:
        load_amazon2014(tmp_path, "Beauty")
    assert info.value.line == 3
    _gz_lines(tmp_path / "reviews_Beauty_5.json.gz", [_review("U1", "B1", 1), "{not json"])
    with pytest.raises(ProtocolError, match="JSON") as info:
        load_amazon2014(tmp_path, "Beauty")
    assert info.value.line == 2


def test_truncated_gzip_is_reported(tmp_path: Path):
    _gz_lines(tmp_path / "reviews_Beauty_5.json.gz",
              [_review(f"U{i}", f"B{i % 7}", i) for i in range(2000)])
    raw = (tmp_path / "reviews_Beauty_5.json.gz").read_bytes()
    (tmp_path / "reviews_Beauty_5.json.gz").write_bytes(raw[: len(raw) // 2])
    _gz_lines(tmp_path / "meta_Beauty.json.gz", ["{'asin': 'B1', 'title': 't'}"])
    with pytest.raises(ProtocolError, match="corrupt or truncated"):
        load_amazon2014(tmp_path, "Beauty")


def test_amazon2018_json_meta(tmp_path: Path):
    _gz_lines(tmp_path / "Toys_and_Games_5.json.gz", [
        _review("A", "X1", 1500000000), _review("B", "X2", 1500000001)])
    _gz_lines(tmp_path / "meta_Toys_and_Games.json.gz", [
        json.dumps({"category": ["Toys"], "title": "Lego \"Classic\" Box", "asin": "X1"}),
        json.dumps({"title": "", "asin": "X2"}),
    ])
    data = load_amazon2018(tmp_path, "Toys_and_Games")
    assert data.name == "amazon2018-Toys_and_Games"
    assert data.titles == {"X1": 'Lego "Classic" Box'}
    assert len(data) == 2
    _gz_lines(tmp_path / "meta_Toys_and_Games.json.gz", [
        json.dumps({"title": "a", "asin": "X1"}), "{'asin': 'X2', 'title': 'python repr'}"])
    with pytest.raises(ProtocolError, match="JSON object") as info:
        load_amazon2018(tmp_path, "Toys_and_Games")
    assert info.value.line == 2
