"""Unit-level checks: titles, filtering, sampling, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from protocols.build import build_protocol
from protocols.errors import ProtocolError
from protocols.files import load_protocol
from protocols.sampling import candidate_negatives
from protocols.titles import SEPARATOR, normalize_title, unique_titles
from tests.conftest import write_atomic_dataset


def test_title_normalization():
    assert normalize_title("  Tom &amp; Jerry\n\tThe  Movie ") == "Tom & Jerry The Movie"
    assert normalize_title(None) == "" and normalize_title(float("nan")) == ""
    assert SEPARATOR not in normalize_title("a\nb")


def test_duplicate_titles_made_unique_deterministically():
    got = unique_titles({"10": "Heat", "9": "Heat", "3": "Heat (2)", "4": "Up"})
    assert got["9"] == "Heat" and got["10"] == "Heat (3)" and got["3"] == "Heat (2)"
    assert len(set(got.values())) == 4
    assert unique_titles(dict(reversed(list({"10": "Heat", "9": "Heat"}.items())))) == \
        unique_titles({"10": "Heat", "9": "Heat"})


def _toy(tmp_path, n_users=40, n_items=60, per_user=8, seed=0):
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(n_users):
        for t, i in enumerate(rng.choice(n_items, per_user, replace=False)):
            lines.append(f"u{u}\ti{i}\t5\t{1000 + t}")
    items = [f"i{i}\tTitle {i}" for i in range(n_items)]
    return write_atomic_dataset(tmp_path / "toy", lines, items)


def test_any_atomic_directory_builds(tmp_path):
    root = _toy(tmp_path)
    m = build_protocol("toy", "warm", 0, tmp_path / "out", data_path=root, kcore=2,
                       general_fraction=0.25)
    p = load_protocol(tmp_path / "out")
    assert m["counts"]["test_users"] == len(p.test_requests) == 30


def test_untitled_items_dropped_and_counted(tmp_path):
    root = _toy(tmp_path)
    item_file = root / "toy.item"
    lines = item_file.read_text().splitlines()
    lines[1] = "i0\t"  # no title for i0
    item_file.write_text("\n".join(lines) + "\n")
    m = build_protocol("toy", "warm", 0, tmp_path / "out", data_path=root, kcore=2,
                       general_fraction=0.25)
    assert m["counts"]["items_without_title"] == 1
    assert "i0" not in (tmp_path / "out" / "items.jsonl").read_text()


def test_equal_timestamps_keep_file_order(tmp_path):
    lines = [f"u{u}\ti{(i + 40 * u) % 120}\t5\t7" for u in range(3) for i in range(40)]
    root = write_atomic_dataset(tmp_path / "ties", lines, [f"i{i}\tT{i}" for i in range(120)],
                                name="ties")
    build_protocol("ties", "warm", 0, tmp_path / "out", data_path=root, kcore=1,
                   general_fraction=0.34)
    p = load_protocol(tmp_path / "out")
    for seq in p.data.train:
        u = int(seq.user[1:])
        assert list(seq.items) == [f"i{(i + 40 * u) % 120}" for i in range(38)]


@pytest.mark.parametrize("mutate, match, line", [
    (lambda s: s.replace("u3\ti", "u3\t\ti", 1), "5 tab-separated fields", None),
    (lambda s: s.replace("\t5\t1003\n", "\n", 1), "2 tab-separated fields", None),
    (lambda s: s.replace("\nu3\t", "\n\t", 1), "empty or missing field", None),
    (lambda s: s.replace("\t1002\n", "\tsoon\n", 1), "is not a number", None),
    # blank lines (skipped) before the bad one must not shift the reported line
    (lambda s: s.replace("\nu2\t", "\n\n\nu2\t", 1).replace("\t1002\n", "\tsoon\n", 1),
     "is not a number", None),
    (lambda s: s.replace("\nu2\t", "\n\n\r\nu2\t", 1).replace("\nu3\t", "\n\t", 1),
     "empty or missing field", None),
])
def test_bad_lines_name_file_and_line(tmp_path, mutate, match, line):
    root = _toy(tmp_path)
    f = root / "toy.inter"
    f.write_text(mutate(f.read_text()))
    with pytest.raises(ProtocolError, match=match) as e:
        build_protocol("toy", "warm", 0, tmp_path / "out", data_path=root, kcore=2)
    assert "toy.inter:" in str(e.value) and e.value.line and e.value.line > 1
    bad = f.read_bytes().split(b"\n")[e.value.line - 1].decode()
    assert "soon" in bad or bad.count("\t") != 3 or bad.startswith("\t")
    assert not (tmp_path / "out").exists()


def test_missing_files_and_unknown_names(tmp_path):
    with pytest.raises(ProtocolError, match="not found"):
        build_protocol("toy", "warm", 0, tmp_path / "o", data_path=tmp_path / "nowhere")
    with pytest.raises(ProtocolError, match="Did you mean 'ml-1m'"):
        build_protocol("ml-1n", "warm", 0, tmp_path / "o")
    with pytest.raises(ProtocolError, match="unknown setting"):
        build_protocol("ml-100k", "lukewarm", 0, tmp_path / "o")


def test_too_few_interactions_refused(tmp_path):
    root = _toy(tmp_path, per_user=2)
    with pytest.raises(ProtocolError, match="fewer than 3 interactions"):
        build_protocol("toy", "warm", 0, tmp_path / "o", data_path=root, kcore=1)


def test_sampler_uniform_and_exclusive():
    n_items, k = 40, 29
    seen = np.array([0 * n_items + i for i in range(5)], dtype=np.int64)  # user 0 saw 0..4
    users = np.zeros(4000, dtype=np.int64)
    neg = candidate_negatives(np.random.default_rng(0), users, np.arange(n_items), seen, n_items, k)
    assert neg.shape == (4000, k)
    assert all(len(set(r)) == k for r in neg[:50])
    counts = np.bincount(neg.ravel(), minlength=n_items)
    assert counts[:5].sum() == 0
    expected = 4000 * k / 35
    assert np.all(np.abs(counts[5:] - expected) < 0.08 * expected)


def test_sampler_refuses_small_pool():
    seen = np.arange(20, dtype=np.int64)
    with pytest.raises(ProtocolError, match="negatives are needed"):
        candidate_negatives(np.random.default_rng(0), np.array([0]), np.arange(40), seen, 40)


def test_existing_output_replaced_only_on_success(tmp_path):
    out = tmp_path / "out"
    build_protocol("ml-100k", "warm", 0, out, max_users=60)
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(ProtocolError):
        build_protocol("ml-100k", "cold", 0, out, max_users=60, cold_fraction=0.001)
    assert (out / "manifest.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
