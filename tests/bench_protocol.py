"""Protocol build benchmarks (pytest-benchmark; not collected by the normal test run).

    pytest tests/bench_protocol.py --benchmark-only -p no:cacheprovider

Group 'ml-1m shape': our build vs RecBole's load + leave-one-out split + uni29 sampling vs
a straightforward per-user Python sampler, on the same atomic files.
Group 'ml-10m shape': our warm build at MovieLens-10M scale; peak memory measured in a
child process.
"""

from __future__ import annotations

import csv
import json
import random
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from protocols.build import build_protocol
from tests.synthetic import write_synthetic

DATA = Path(tempfile.gettempdir()) / "molorec-bench-synthetic"


@pytest.fixture(scope="module")
def ml1m():
    return write_synthetic(DATA, "ml-1m")


@pytest.fixture(scope="module")
def ml10m():
    return write_synthetic(DATA, "ml-10m")


def _ours(root: Path, out: Path) -> None:
    build_protocol(root.name, "warm", 0, out, data_path=root, general_fraction=0.01)


def _recbole(root: Path) -> int:
    """RecBole 1.2.1: dataset load, 5-core, leave-one-out, one pass of uni29 sampling over
    validation and test (the work our build does)."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    config = Config(model="BPR", dataset=root.name, config_dict={
        "data_path": str(root.parent), "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "user_inter_num_interval": "[5,inf)", "item_inter_num_interval": "[5,inf)",
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user",
                      "mode": "uni29"},
        "show_progress": False, "save_dataset": False, "save_dataloaders": False,
        "checkpoint_dir": tempfile.mkdtemp(), "eval_batch_size": 4096 * 30, "seed": 0,
        "reproducibility": True, "state": "ERROR",
    })
    dataset = create_dataset(config)
    _, valid, test = data_preparation(config, dataset)
    return sum(len(batch[0]) for loader in (valid, test) for batch in loader)


def _python_sampler(root: Path) -> int:
    """The straightforward way: dicts, sort per user, set difference, random.sample."""
    rng = random.Random(0)
    events: dict[str, list[tuple[float, int, str]]] = {}
    with open(root / f"{root.name}.inter", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        next(reader)
        for n, (u, i, ts) in enumerate(reader):
            events.setdefault(u, []).append((float(ts), n, i))
    items = sorted({i for seq in events.values() for _, _, i in seq})
    rows = []
    for u, seq in events.items():
        seq.sort()
        order = [i for _, _, i in seq]
        pool = sorted(set(items) - set(order))
        for pos in (order[-2], order[-1]):
            cands = [pos, *rng.sample(pool, 29)]
            rng.shuffle(cands)
            rows.append(json.dumps({"user": u, "positive": pos, "candidates": cands}))
    return len(rows)


@pytest.mark.benchmark(group="ml-1m shape: warm split + 1+29 candidates")
def test_ours_ml1m(benchmark, ml1m, tmp_path):
    benchmark.pedantic(_ours, args=(ml1m, tmp_path / "out"), rounds=3, iterations=1)


@pytest.mark.benchmark(group="ml-1m shape: warm split + 1+29 candidates")
def test_recbole_ml1m(benchmark, ml1m):
    benchmark.pedantic(_recbole, args=(ml1m,), rounds=1, iterations=1)


@pytest.mark.benchmark(group="ml-1m shape: warm split + 1+29 candidates")
def test_python_sampler_ml1m(benchmark, ml1m):
    benchmark.pedantic(_python_sampler, args=(ml1m,), rounds=1, iterations=1)


@pytest.mark.benchmark(group="ml-10m shape: warm split + 1+29 candidates")
def test_ours_ml10m(benchmark, ml10m, tmp_path):
    benchmark.pedantic(_ours, args=(ml10m, tmp_path / "out"), rounds=1, iterations=1)


@pytest.mark.benchmark(group="ml-10m shape: peak memory (child process, incl. start-up)")
def test_ours_ml10m_peak_memory(benchmark, ml10m, tmp_path):
    """Peak resident memory of the 10M build, in a fresh child process."""
    code = ("from protocols.build import build_protocol; from pathlib import Path; "
            f"build_protocol({ml10m.name!r}, 'warm', 0, {str(tmp_path / 'o')!r}, "
            f"data_path=Path({str(ml10m)!r}), general_fraction=0.01)")
    benchmark.pedantic(subprocess.run, args=([sys.executable, "-c", code],),
                       kwargs={"check": True}, rounds=1, iterations=1)
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    benchmark.extra_info["peak_rss_gb"] = round(peak_gb, 2)
    print(f"\npeak RSS of the ML-10M-shape build: {peak_gb:.2f} GB")
    assert peak_gb < 4.0
