"""Per-cell results as stored on disk, and the recomputation of metrics from scores.

A cell is one (table, dataset, setting, system, seed). Its directory holds:
  scores.jsonl   {"user", "candidates": [30 ids], "scores": [30 floats] or null}
                 (file order; null: the system abstained, a miss)
  metrics.jsonl  {"user", "positive", "NDCG@1": v, "NDCG@3": v, ...}   per user
  cell.json      what was run: names, profile, config and its hash, candidates_sha256
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protocols import metrics as M

METRICS = ("NDCG@1", "NDCG@3", "HR@1", "HR@3", "MRR")


@dataclass
class CellResult:
    """One finished cell: per-user metric values aligned by user id."""

    table: str
    dataset: str
    setting: str
    system: str
    group: str
    seed: int
    candidates_sha256: str
    users: list[str]
    values: dict[str, np.ndarray]  # metric name -> per-user values, aligned with users
    meta: dict[str, Any] = field(default_factory=dict)

    def mean(self, metric: str) -> float:
        return float(np.mean(self.values[metric]))


def metric_rows(users, positives, candidates, scores: np.ndarray) -> tuple[list[dict], dict]:
    """Per-user metric rows plus per-metric arrays, from scores in candidate-file order."""
    pos = np.array([c.index(p) for c, p in zip(candidates, positives, strict=True)])
    values = {m: M.compute(m, scores, pos) for m in METRICS}
    rows = [
        {"user": u, "positive": p, **{m: float(values[m][n]) for m in METRICS}}
        for n, (u, p) in enumerate(zip(users, positives, strict=True))
    ]
    return rows, values


def jsonl_text(rows) -> str:
    """Serialize rows as JSON lines (the caller writes the text atomically)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def load_cell(cell_dir: Path) -> CellResult:
    """Read a finished cell directory back."""
    meta = json.loads((cell_dir / "cell.json").read_text())
    rows = [json.loads(line) for line in (cell_dir / "metrics.jsonl").read_text().splitlines()]
    users = [r["user"] for r in rows]
    values = {m: np.array([r[m] for r in rows], dtype=np.float64) for m in METRICS}
    return CellResult(meta["table"], meta["dataset"], meta["setting"], meta["system"],
                      meta["group"], int(meta["seed"]), meta["candidates_sha256"],
                      users, values, meta)


def recompute_from_scores(scores_path: Path, candidates_path: Path, metric: str) -> float:
    """Mean of `metric` recomputed from scores.jsonl and the protocol's candidate file,
    independent of the stored metrics: the check that every number is reproducible."""
    positives = {}
    for line in Path(candidates_path).read_text().splitlines():
        r = json.loads(line)
        positives[r["user"]] = r["positive"]
    rows = [json.loads(line) for line in Path(scores_path).read_text().splitlines()]
    scores = np.array([[np.nan] * len(r["candidates"]) if r["scores"] is None else r["scores"]
                       for r in rows], dtype=np.float64)
    pos = np.array([r["candidates"].index(positives[r["user"]]) for r in rows])
    return float(M.compute(metric, scores, pos).mean())
