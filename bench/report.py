"""`bench report`: rebuild tables from stored cells, without training anything."""

from __future__ import annotations

import json
from pathlib import Path

from bench.profiles import TABLE_SETTINGS
from bench.results import CellResult, load_cell
from bench.runner import caption_notes


def stored_cells(out: Path) -> list[CellResult]:
    return [load_cell(p.parent) for p in sorted((out / "cells").glob("*/*/*/seed-*/cell.json"))]


def rebuild(out: Path, table: str | None = None, reference: str | None = None
            ) -> list[dict[str, Path]]:
    """Render each requested table from the cells stored under `out`."""
    from reports.tables import render_all

    cells = stored_cells(out)
    tables = [table] if table else [t for t in TABLE_SETTINGS
                                    if any(c.setting in TABLE_SETTINGS[t] for c in cells)]
    written = []
    for t in tables:
        chosen = [c for c in cells if c.setting in TABLE_SETTINGS[t]]
        if not chosen:
            raise FileNotFoundError(f"no stored cells for table {t!r} under {out}")
        if t == "fewshot":
            for c in chosen:
                c.dataset = f"{c.dataset} {c.setting.split('-')[1]}%"
        written.append(render_all(chosen, out, t, reference=reference,
                                  notes=caption_notes(chosen)))
    return written


def describe_cells(out: Path) -> str:
    """One JSON line per stored cell (for debugging)."""
    return "\n".join(json.dumps(c.meta, sort_keys=True) for c in stored_cells(out))
