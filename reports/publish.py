"""A run's table files, and `bench report`: the same files rebuilt from stored cells.

This is the layer above bench: the runner computes and verifies cells, and here they
become <table>.md/.tex/.json (reports.tables) with the caption notes the systems supply
(`caption_note` in describe()), failed rows marked, and rows in registry order. Nothing
here knows a particular system or setting: the registry and the setting specs do.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from bench import outdir, overrides, registry
from bench.results import CellResult
from bench.runner import TableRun, left_out_path, not_built_path, run_table
from bench.stored import finished_cells, stored_failures
from protocols import settings
from protocols.errors import OutputError
from protocols.options import split_suffix
from reports.tables import render_all


def caption_notes(results: Sequence[CellResult]) -> list[str]:
    """Facts the caption must state that only the cells know: each system may put a
    `caption_note` (a sentence, or a list of them) in its describe() (the LLM rows name
    their backbone, backend and ranking mode); equal notes are stated once, in row order."""
    notes: list[str] = []
    for r in results:
        note = r.meta.get("describe", {}).get("caption_note")
        for n in note if isinstance(note, list) else [note]:
            if n and str(n) not in notes:
                notes.append(str(n))
    changed = {r.system: r.meta["overrides"] for r in results if r.meta.get("overrides")}
    if (note := overrides.caption_note(changed)) is not None:
        notes.append(note)
    return notes


def check_one_backbone(results: Sequence[CellResult], table: str) -> None:
    """A table never mixes cells of two backbones: the LLM rows' configs must name one
    model (by its sha256 where pinned, else by the whole backbone config)."""
    seen: dict[str, str] = {}
    for r in results:
        bb = (r.meta.get("config") or {}).get("backbone")
        if isinstance(bb, dict):
            ident = str(bb.get("sha256") or sorted(bb.items()))
            seen.setdefault(ident, f"{bb.get('label', '?')} ({r.system} on {r.dataset})")
    if len(seen) > 1:
        raise OutputError(f"table {table!r} would mix cells of {len(seen)} backbones: "
                          f"{'; '.join(seen.values())}; rerun its LLM rows with one "
                          "--backbone (or write to another --out)")


def failure_note(failures: Iterable[tuple[str, str]]) -> str:
    """The caption's sentence on failed rows, from (row label, error) pairs."""
    first: dict[str, str] = {}
    for label, error in failures:
        first.setdefault(label, error[:120])
    return "Failed rows have no values: " + "; ".join(f"{k} ({v})" for k, v in first.items())


def left_out_note(left_out: dict[str, str]) -> str:
    """The caption's sentence on rows a full-ranking table leaves out, from label -> why."""
    return ("Left out of full ranking: " + "; ".join(
        f"{label} ({why or 'it does not declare full-ranking support'})"
        for label, why in left_out.items()))


def not_built_note(not_built: dict[str, str]) -> str:
    """The caption's sentence on settings whose protocol could not be built, from
    "dataset/setting" -> why."""
    return ("Not built on this data, so not in the table: " + "; ".join(
        f"{key} ({why[:160]})" for key, why in not_built.items()))


def _stored_map(path: Path, what: str, log: Callable[[str], None]) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        found = json.loads(path.read_text())
        return {str(k): str(v) for k, v in found.items()}
    except (ValueError, AttributeError, OSError) as e:
        log(f"warning: {path} is not readable ({e}); the caption names no {what}")
        return {}


def stored_left_out(out: Path, table: str, log: Callable[[str], None]) -> dict[str, str]:
    """The rows the last full-ranking run of `table` left out (OUT/<table>.left_out.json)."""
    return _stored_map(left_out_path(out, table), "left-out rows", log)


def stored_not_built(out: Path, table: str, log: Callable[[str], None]) -> dict[str, str]:
    """The settings the last run of `table` could not build (OUT/<table>.not_built.json)."""
    return _stored_map(not_built_path(out, table), "settings left unbuilt", log)


def render_run(run: TableRun, reference: str | None = None) -> dict[str, Path]:
    """Write the files of a table run (`bench.runner.run_table(render=...)`)."""
    check_one_backbone(run.results, run.table)
    notes = caption_notes(run.results)
    if run.left_out:
        notes.append(left_out_note(run.left_out))
    if run.not_built:
        notes.append(not_built_note(run.not_built))
    if run.failures:
        notes.append(failure_note((f.label, f.error) for f in run.failures))
    return render_all(run.results, run.out, run.table, reference=reference, notes=notes,
                      order=run.order, failed={f.label: f.group for f in run.failures})


def publish_table(table: str, profile: str = "cpu", out: str | Path = "runs/default", *,
                  reference: str | None = None, **options: Any) -> TableRun:
    """`python -m bench run`: run every cell of a table (bench.runner.run_table, same
    options), then write its files."""
    return run_table(table, profile, out, render=partial(render_run, reference=reference),
                     **options)


def row_order(cells: Sequence[CellResult], failed: Sequence[dict]) -> list[str]:
    """Row labels in registry order (by each cell's class, each failure's system)."""
    table = registry.available()
    names, targets = list(table), list(table.values())

    def rank(target: str | None, label: str) -> tuple[int, str]:
        return (targets.index(target) if target in targets else len(targets), label.lower())

    rows = [(rank(c.meta.get("class"), c.system), c.system) for c in cells]
    rows += [(rank(table[f["system"]] if f.get("system") in names else None, f["label"]),
              f["label"]) for f in failed]
    return list(dict.fromkeys(label for _, label in sorted(rows)))


def rebuild(out: Path, table: str | None = None, reference: str | None = None,
            log: Callable[[str], None] = print) -> list[dict[str, Path]]:
    """Render each requested table from the verified cells stored under `out`; rows
    whose system failed in the table's last run are marked failed."""
    out = Path(out)
    cells = finished_cells(out, log)
    outdir.claim(out)
    tables = settings.tables()
    # a table's cells name it (warm, or warm-n99 at another candidate count)
    stored = sorted({c.table for c in cells if split_suffix(c.table)[0] in tables},
                    key=lambda t: (list(tables).index(split_suffix(t)[0]), len(t), t))
    wanted = [table] if table else stored
    plans = []  # every table is checked before any file is written
    for t in wanted:
        failed = stored_failures(out, t, log)
        labels = {f["label"] for f in failed}
        chosen = [c for c in cells if c.table == t and c.system not in labels]
        base, n = split_suffix(t)
        how = f" --negatives {n}" if t != base else ""
        if not chosen:
            raise OutputError(f"no stored cells for table {t!r} under {out}; run `python -m "
                              f"bench run --table {base}{how} --out {out}` first")
        lost = shown_but_missing(out / f"{t}.json", chosen, labels)
        if lost:
            raise OutputError(
                f"{out / t}.md/.tex/.json show {len(lost)} cell(s) that are no longer stored "
                f"and were not reported failed: {'; '.join(lost)}. Rerun `python -m bench run "
                f"--table {base}{how} --out {out}` to compute them (finished cells are "
                f"reused), or delete {out / t}.json to tabulate only the stored cells")
        check_one_backbone(chosen, t)
        plans.append((t, failed, chosen))
    written = []
    for t, failed, chosen in plans:
        notes = caption_notes(chosen)
        if left := stored_left_out(out, t, log):
            notes.append(left_out_note(left))
        if unbuilt := stored_not_built(out, t, log):
            notes.append(not_built_note(unbuilt))
        if failed:
            notes.append(failure_note((f["label"], f["error"]) for f in failed))
        written.append(render_all(chosen, out, t, reference=reference, notes=notes,
                                  order=row_order(chosen, failed),
                                  failed={f["label"]: f["group"] for f in failed}))
    return written


def shown_but_missing(table_json: Path, cells: Sequence[CellResult], failed: set[str]
                      ) -> list[str]:
    """The cells the table file now shows (a value per row, column and seed) that are not
    among `cells` and whose row is not in `failed`: a `report` must not drop them from the
    table without a word (a partial copy of a results folder). A file this code cannot
    read (absent, from an older version) shows nothing."""
    try:
        shown = json.loads(table_json.read_text(encoding="utf-8"))
        cols = [(c["dataset"], c["setting"], {s for k in c["candidates"] for s in k["seeds"]})
                for c in shown["columns"]]
        expected = {(d, s, r["system"], seed)
                    for r in shown["rows"] if not r["failed"] and r["system"] not in failed
                    for (d, s, seeds), value in zip(cols, r["cells"], strict=True)
                    if value is not None for seed in set(r["seeds"]) & seeds}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    have = {(c.dataset, c.setting, c.system, c.seed) for c in cells}
    return [f"{label} on {d} ({s}), seed {seed}"
            for d, s, label, seed in sorted(expected - have, key=str)]
