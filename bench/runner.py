"""The data flow in one place: protocol files -> systems (fit, score) -> per-user results
-> tables. Every (table, dataset, setting, system, seed) cell is cached under its config
hash; finished cells are skipped on a rerun, and each is written atomically.

Layout under OUT:
  protocols/<dataset>/<setting>/seed-<n>/    the protocol files (see protocols/files.py)
  cells/<dataset>/<setting>/<system>/seed-<n>/  scores.jsonl, metrics.jsonl, cell.json
  cache/                                      artifacts systems share (pretrained modules)
  <table>.md, <table>.tex                     the tables
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from bench import profiles, registry
from bench.api import ScoreRequest, System
from bench.results import CellResult, jsonl_text, load_cell, metric_rows
from protocols import metrics as M
from protocols.build import build_protocol
from protocols.files import atomic_dir, load_protocol

CELL_FORMAT = "molorec-bench-cell/1"
SCORE_BATCH = 256


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def ensure_protocol(out: Path, dataset: str, setting: str, seed: int, options: dict,
                    data_path: str | None = None) -> Path:
    """Build the protocol directory unless one with the same options is already there."""
    root = Path(out) / "protocols" / _slug(dataset) / setting / f"seed-{seed}"
    manifest = root / "manifest.json"
    if manifest.exists():
        have = json.loads(manifest.read_text())
        want = {"kcore": 5, "general_fraction": 0.5, "cold_fraction": 0.1, "max_users": None,
                "negatives": 29, **options}
        if have.get("options") == want:
            return root
    build_protocol(dataset, setting, seed, root, data_path=data_path, **options)
    return root


def cell_key(system_cls: type[System], config: dict, seed: int, manifest: dict) -> str:
    """Hash of everything that determines a cell's numbers."""
    blob = json.dumps({
        "format": CELL_FORMAT, "system": system_cls.name,
        "class": f"{system_cls.__module__}:{system_cls.__qualname__}",
        "config": config, "seed": seed, "protocol_files": manifest["files"],
    }, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def score_all(system: System, requests: Sequence[ScoreRequest], desc: str) -> np.ndarray:
    """Score in batches and check the contract: (n, n_candidates), all finite."""
    parts = []
    for start in tqdm(range(0, len(requests), SCORE_BATCH), desc=desc, leave=False,
                      unit="batch"):
        batch = requests[start:start + SCORE_BATCH]
        s = np.asarray(system.score(batch), dtype=np.float64)
        want = (len(batch), len(batch[0].candidates))
        if s.shape != want:
            raise ValueError(f"{system.name}.score returned shape {s.shape}, expected {want}")
        if not (np.isfinite(s) | M.abstained(s)[:, None]).all():
            raise ValueError(f"{system.name}.score returned non-finite scores "
                             "(only a whole row of NaN, an abstention, is allowed)")
        parts.append(s)
    return np.concatenate(parts) if parts else np.zeros((0, 30))


def run_cell(proto_dir: Path, system_name: str, profile: str, seed: int, cell_dir: Path,
             workdir: Path, force: bool = False, table: str = "") -> CellResult:
    """Fit one system on one protocol and score its test candidates (cached)."""
    cls = registry.resolve(system_name)
    config = cls.config_for(profile)
    proto = load_protocol(proto_dir)
    key = cell_key(cls, config, seed, proto.manifest)
    meta_path = cell_dir / "cell.json"
    if not force and meta_path.exists() and json.loads(meta_path.read_text()).get("key") == key:
        return load_cell(cell_dir)
    _seed_everything(seed)
    system = cls(config, seed, str(workdir))
    t0 = time.perf_counter()
    system.fit(proto.data, proto.valid)
    t1 = time.perf_counter()
    scores = score_all(system, proto.test_requests, f"{system_name} scoring")
    t2 = time.perf_counter()
    # labels are read only now, after the system has scored
    positives = proto.test_positives()
    users = [r.user for r in proto.test_requests]
    candidates = [r.candidates for r in proto.test_requests]
    rows, _ = metric_rows(users, positives, candidates, scores)
    meta = {
        "format": CELL_FORMAT, "key": key, "table": table, "dataset": proto.data.dataset,
        "class": f"{cls.__module__}:{cls.__qualname__}",
        "setting": proto.data.setting, "system": system.label, "group": cls.group, "seed": seed,
        "profile": profile, "config": config, "candidates_sha256": proto.candidates_sha256,
        "protocol": str(proto_dir), "describe": system.describe(),
    }
    # an abstaining row (all NaN) is written as null: JSON has no NaN
    score_rows = [{"user": u, "candidates": list(c),
                   "scores": None if np.isnan(s).all() else s.tolist()}
                  for u, c, s in zip(users, candidates, scores, strict=True)]
    with atomic_dir(cell_dir) as tmp:
        (tmp / "scores.jsonl").write_text(jsonl_text(score_rows), encoding="utf-8")
        (tmp / "metrics.jsonl").write_text(jsonl_text(rows), encoding="utf-8")
        (tmp / "cell.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        (tmp / "timing.json").write_text(json.dumps(
            {"fit_seconds": round(t1 - t0, 3), "score_seconds": round(t2 - t1, 3)}))
    return load_cell(cell_dir)


def _seed_everything(seed: int) -> None:
    """Seed every generator, and pin torch's CPU threads: MOLOREC_BENCH_THREADS, default 1.
    On small CPU machines one thread per process was up to 10x faster than two whenever
    anything else ran beside it, and results do not depend on it."""
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(int(os.environ.get("MOLOREC_BENCH_THREADS", "1")))


def caption_notes(results: Sequence[CellResult]) -> list[str]:
    """Facts the caption must state that only the cells know (the LLM ranking mode)."""
    modes = sorted({str(m) for r in results
                    if (m := r.meta.get("describe", {}).get("ranking_mode")) is not None})
    if not modes:
        return []
    return [f"LLM rows rank the 30 candidates in {' and '.join(modes)} mode (score: mean "
            "log-likelihood per answer token of each title; generate: greedy decoding "
            "parsed against the candidate titles; an answer naming no candidate is a "
            "miss)"]


@dataclass
class TableRun:
    table: str
    results: list[CellResult]
    paths: dict[str, Path]
    markdown: str
    seconds: float


def run_table(table: str, profile: str = "cpu", out: str | Path = "runs/default",
              datasets: Sequence[str] | None = None, systems: Sequence[str] | None = None,
              seeds: Sequence[int] | None = None, force: bool = False,
              reference: str | None = None, data_path: str | None = None,
              log: Callable[[str], None] = print) -> TableRun:
    """Run (or load from cache) every cell of a table, then render it."""
    if table not in profiles.TABLE_SETTINGS:
        raise KeyError(f"unknown table {table!r}; use one of {', '.join(profiles.TABLE_SETTINGS)}")
    prof = profiles.get(profile)
    datasets = tuple(datasets or prof.datasets)
    systems = tuple(systems or prof.systems)
    seeds = tuple(prof.seeds if seeds is None else seeds)
    for name in systems:  # fail fast on typos, before any training
        registry.resolve(name)
    out = Path(out)
    workdir = out / "cache"
    t0 = time.perf_counter()
    jobs = [(d, s, seed, name) for d in datasets for s in profiles.TABLE_SETTINGS[table]
            for seed in seeds for name in systems]
    results = []
    for dataset, setting, seed, name in tqdm(jobs, desc=f"{table} table", unit="cell"):
        proto_dir = ensure_protocol(out, dataset, setting, prof.protocol_seed, prof.protocol,
                                    data_path)
        cell_dir = out / "cells" / _slug(dataset) / setting / _slug(name) / f"seed-{seed}"
        res = run_cell(proto_dir, name, profile, seed, cell_dir, workdir, force, table)
        if table == "fewshot":
            res.dataset = f"{dataset} {setting.split('-')[1]}%"
        results.append(res)
    from reports.tables import render_all

    paths = render_all(results, out, table, reference=reference, notes=caption_notes(results))
    markdown = paths["md"].read_text() if "md" in paths else ""
    return TableRun(table, results, paths, markdown, time.perf_counter() - t0)
