"""The cells and failure records stored under `--out`, as `bench report` reads them.

Every cell is verified first (`bench.results.load_cell`: recorded hashes, metrics
recomputed from scores); a damaged cell is named and refused, never used.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from bench import registry
from bench.results import CellResult, DamagedCell, load_cell
from bench.runner import _slug, failures_path
from protocols.errors import HarnessError, OutputError
from protocols.options import negatives_suffix, split_suffix


class DamagedCells(HarnessError, ValueError):
    """One or more stored cells failed verification."""


def _canonical_dir(c: CellResult) -> str | None:
    """The directory name the current code gives the cell's system, from its class."""
    by_target = {t: n for n, t in registry.available().items()}
    name = by_target.get(str(c.meta.get("class", "")))
    return _slug(name) if name else None


def _dedupe(found: list[tuple[Path, CellResult]], log: Callable[[str], None]
            ) -> list[CellResult]:
    """One cell per (table, dataset, setting, row, seed). Older versions stored a system
    named in another case twice (`random/` beside `Random/`): the canonical one is kept
    and the other named; any other duplicate is an error."""
    groups: dict[tuple, list[tuple[Path, CellResult]]] = {}
    for d, c in found:
        groups.setdefault((c.table, c.dataset, c.setting, c.system, c.seed), []).append((d, c))
    kept = []
    for key, cells in groups.items():
        if len(cells) == 1:
            kept.append(cells[0][1])
            continue
        canon = [(d, c) for d, c in cells if d.parent.name == _canonical_dir(c)]
        if len(canon) != 1:
            raise DamagedCells(f"{len(cells)} cells for {key[3]} on {key[1]} ({key[2]}), seed "
                               f"{key[4]}: {', '.join(str(d) for d, _ in cells)}; delete all "
                               "but one")
        for d, _ in cells:
            if d != canon[0][0]:
                log(f"warning: ignoring {d}, a second cell for {key[3]} (stored under a "
                    f"non-canonical name by an older version); {canon[0][0]} is used. "
                    "Delete it to silence this warning.")
        kept.append(canon[0][1])
    return kept


def cell_dirs(out: Path) -> list[Path]:
    """Every cell directory under OUT/cells, finished or not: a directory the runner made
    (it only ever renames a whole cell into place) that lacks its cell.json was emptied
    by hand or copied in part (an interrupted rsync), and must be named, not skipped."""
    return sorted(p for p in (Path(out) / "cells").glob("*/*/*/seed-*")
                  if not p.name.startswith("."))


def stored_cells(out: Path, log: Callable[[str], None] = print) -> list[CellResult]:
    """Every cell under `out`, verified; refuses (naming each) if any is damaged."""
    found, damaged = [], []
    for d in cell_dirs(out):
        try:
            found.append((d, load_cell(d)))
        except DamagedCell as e:
            damaged.append(str(e))
    if damaged:
        raise DamagedCells(
            f"{len(damaged)} stored cell(s) failed verification and are never used:\n  "
            + "\n  ".join(damaged)
            + f"\nRerun `python -m bench run ... --out {out}` to recompute them (a run replaces "
              "damaged cells), or delete those cell directories.")
    return _dedupe(found, log)


def finished_cells(out: Path, log: Callable[[str], None] = print) -> list[CellResult]:
    """`stored_cells` for the commands that read a finished run (report, compare,
    figures, explain): a missing or empty results directory is an error saying to run."""
    if not Path(out).is_dir():
        raise OutputError(f"--out {out} does not exist; run `python -m bench run --out {out}` "
                          "first")
    cells = stored_cells(out, log)
    if not cells:
        raise OutputError(f"no stored cells under {out}/cells; run `python -m bench run --out "
                          f"{out}` first")
    return cells


def _written_since(out: Path, row: dict, since: float, suffix: str = "") -> bool:
    """Whether the cell a failure record names was written after the record: by a later
    run that stopped before it could rewrite the failures file (killed, interrupted)."""
    try:
        cell = (Path(out) / "cells" / _slug(str(row["dataset"])) / (str(row["setting"]) + suffix)
                / _slug(str(row["system"])) / f"seed-{int(row['seed'])}" / "cell.json")
        return cell.stat().st_mtime > since
    except (KeyError, TypeError, ValueError, OSError):
        return False


def stored_failures(out: Path, table: str, log: Callable[[str], None]) -> list[dict]:
    """The failed cells `table`'s last run recorded (their rows stay marked failed), less
    those a later, unfinished run has since computed."""
    path = failures_path(out, table)
    if not path.exists():
        return []
    suffix = negatives_suffix(split_suffix(table)[1])  # warm-n99's cells: <setting>-n99/
    try:
        rows = json.loads(path.read_text())
        since = path.stat().st_mtime
        return [r for r in rows if {"label", "group", "error"} <= set(r)
                and not _written_since(out, r, since, suffix)]
    except (ValueError, TypeError, AttributeError, OSError) as e:
        log(f"warning: {path} is not readable ({e}); failed rows are not marked")
        return []


def describe_cells(out: Path) -> str:
    """One JSON line per stored cell (for debugging)."""
    return "\n".join(json.dumps(c.meta, sort_keys=True) for c in stored_cells(out))
