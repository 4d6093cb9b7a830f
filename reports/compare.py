"""Every row against one reference row: means, paired t-tests, and fit/score seconds.

A table marks only its best row against the runner-up; a reader checking a claim (MoLoRec
against each other row) wants every row's p-value against one row. The values are the
verified per-user values the tables use (`bench.stored`), so each number here can be
recomputed from the exported scores like any table number.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.results import CellResult
from protocols.errors import OutputError
from protocols.options import negatives_suffix, split_suffix
from protocols.registry import did_you_mean, suggest
from protocols.stats import paired_ttest


def timings(out: Path) -> dict[tuple[str, str, str, str, int], dict[str, float]]:
    """(table, dataset, setting, system, seed) -> the runner's timing.json of that cell
    (the table, since one --out holds a table at several candidate counts)."""
    found = {}
    for cell in sorted(Path(out).glob("cells/*/*/*/seed-*/cell.json")):
        timing = cell.parent / "timing.json"
        if timing.is_file():
            m = json.loads(cell.read_text(encoding="utf-8"))
            key = (m.get("table", ""), m["dataset"], m["setting"], m["system"], int(m["seed"]))
            found[key] = json.loads(
                timing.read_text(encoding="utf-8"))
    return found


def compare(cells: Sequence[CellResult], against: str, metrics: Sequence[str],
            seconds: dict[tuple[str, str, str, str, int], dict[str, float]] | None = None
            ) -> list[dict[str, Any]]:
    """One row per cell of the (dataset, setting, seed) blocks that hold `against`: the
    mean of each metric and the two-sided paired t-test p-value against `against` on the
    same users (None for `against` itself)."""
    # keyed by table too: one --out holds a table at several candidate counts (warm-n99)
    refs = {(c.table, c.dataset, c.setting, c.seed): c for c in cells
            if c.system.casefold() == against.casefold()}
    if not refs:
        rows = sorted({c.system for c in cells}, key=str.lower)
        raise OutputError(f"--against {against}: no stored cell for {against!r}."
                          f"{did_you_mean(suggest(against, rows))} Stored rows: "
                          f"{', '.join(rows)}")
    rows = []
    for c in cells:
        ref = refs.get((c.table, c.dataset, c.setting, c.seed))
        if ref is None:
            continue
        where = {u: i for i, u in enumerate(ref.users)}
        try:
            idx = np.array([where[u] for u in c.users])
        except KeyError as e:
            raise OutputError(f"{c.system} scored user {e} that {ref.system} did not "
                              f"({c.dataset}, {c.setting}): not the same candidate file") from e
        row: dict[str, Any] = {"table": c.table, "dataset": c.dataset, "setting": c.setting,
                               "seed": c.seed,
                               "system": c.system, "group": c.group}
        for m in metrics:
            if m not in c.values:
                raise OutputError(f"{c.system} has no metric {m!r}; it has "
                                  f"{', '.join(c.values)}")
            row[m] = c.mean(m)
            row[f"p {m}"] = (None if c is ref else
                             paired_ttest(c.values[m], ref.values[m][idx]))
        t = (seconds or {}).get((c.table, c.dataset, c.setting, c.system, c.seed), {})
        row["fit_seconds"], row["score_seconds"] = t.get("fit_seconds"), t.get("score_seconds")
        rows.append(row)
    return rows


def _num(x: float | None, fmt: str) -> str:
    return "" if x is None else format(x, fmt)


def to_markdown(rows: Sequence[dict[str, Any]], against: str, metrics: Sequence[str]) -> str:
    """A pipe table per (dataset, setting, seed) block, rows in the order given."""
    out = []
    blocks: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        blocks.setdefault((r.get("table", ""), r["dataset"], r["setting"], r["seed"]), []
                          ).append(r)
    for (table, dataset, setting, seed), rs in blocks.items():
        shown = setting + negatives_suffix(split_suffix(table)[1]) if table else setting
        out.append(f"{dataset}, {shown}, seed {seed}: paired t-tests against {against} "
                   f"({len(rs)} rows)\n")
        head = ["row", *(x for m in metrics for x in (m, f"p vs {against}")),
                "fit s", "score s"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for r in rs:
            cols = [r["system"]]
            for m in metrics:
                cols += [f"{r[m]:.4f}", _num(r[f"p {m}"], ".3g") or "-"]
            cols += [_num(r["fit_seconds"], ".0f"), _num(r["score_seconds"], ".0f")]
            out.append("| " + " | ".join(cols) + " |")
        out.append("")
    return "\n".join(out)
