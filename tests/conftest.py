"""Shared fixtures: protocol directories built once per test session."""

from __future__ import annotations

import pytest
import torch

from protocols.build import build_protocol

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test starts on one torch thread, as every non-LLM cell does (bench.cells
    sets each cell's own): an LLM cell run in-process by an earlier test leaves all cores
    set, and VQ-Rec's sums on 2 threads differ between two instances now and then (3e-8:
    the contract test of two instances failed in a clean-clone CI run this way)."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _hash_cache(tmp_path_factory):
    """Remembered model hashes (bench.identity) go to a test directory, not ~/.cache."""
    import os

    path = tmp_path_factory.getbasetemp() / "file-sha256.json"
    old = os.environ.get("MOLOREC_HASH_CACHE")
    os.environ["MOLOREC_HASH_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MOLOREC_HASH_CACHE", None)
    else:
        os.environ["MOLOREC_HASH_CACHE"] = old


@pytest.fixture(scope="session")
def smoke_warm_serial(tmp_path_factory):
    """The smoke warm table with every default system, serial: (out, TableRun). Shared by
    the end-to-end test and the parallel runs compared with it."""
    from reports.publish import publish_table

    out = tmp_path_factory.getbasetemp() / "e2e"  # the cold table reuses its artifacts
    return out, publish_table("warm", "smoke", out, log=lambda s: None)


@pytest.fixture(scope="session")
def protocol_dirs(tmp_path_factory):
    """Embedded ML-100K, every setting, seed 0 (full size: builds take ~1 s each)."""
    root = tmp_path_factory.mktemp("protocols")
    out = {}
    for setting in ("warm", "cold", "fewshot-10", "fewshot-20", "fewshot-30"):
        build_protocol("ml-100k", setting, 0, root / setting)
        out[setting] = root / setting
    return out


def write_atomic_dataset(root, inter_lines, item_lines, name="toy"):
    """Write a tiny RecBole atomic dataset; lines exclude the header."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "".join(line + "\n" for line in inter_lines))
    (root / f"{name}.item").write_text(
        "item_id:token\ttitle:token_seq\n" + "".join(line + "\n" for line in item_lines))
    return root


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A finished smoke warm table of Random and Pop (each test module builds its own)."""
    from reports.publish import publish_table

    out = tmp_path_factory.mktemp("cells") / "run"
    publish_table("warm", "smoke", out, systems=["Random", "Pop"], log=lambda s: None)
    return out


@pytest.fixture()
def run_dir(pristine, tmp_path):
    """A copy of `pristine` a test may damage (its cells record the original protocol
    path; the layout finds the copy's)."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(pristine, out)
    return out

