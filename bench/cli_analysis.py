"""`bench figures` and `bench explain`: the paper's analysis of a finished run (Figures 4-6).

Part of the command line (it composes every layer): stored cells (bench.stored), the
MoLoRec analyses (molorec.analysis, molorec.explain) and the drawing (reports.figures).
Both hold the results directory's lock while they write into it (OUT/figures,
OUT/explain, and the artifacts they add to OUT/cache).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import outdir, registry
from bench.results import CellResult
from bench.runner import _slug
from bench.stored import finished_cells
from protocols import settings
from protocols.errors import OptionError, OutputError
from protocols.files import load_protocol
from protocols.options import DEFAULT_NEGATIVES
from protocols.store import atomic_write_text

MOLOREC = "MoLoRec"
REFERENCE_ROWS = ("MoLoRec-G", "MoLoRec-S")  # dashed lines in Figure 5


def _is(cell: CellResult, name: str) -> bool:
    return cell.meta.get("class") == registry.available().get(name)


def _protocol_of(out: Path, cell: CellResult):
    """The protocol the cell was scored on: found under OUT by its candidates hash."""
    for manifest in sorted((out / "protocols").glob("*/*/seed-*/manifest.json")):
        proto = load_protocol(manifest.parent)
        if (proto.data.dataset, proto.data.setting, proto.candidates_sha256) == (
                cell.dataset, cell.setting, cell.candidates_sha256):
            return proto
    raise OutputError(f"the protocol of {cell.system} on {cell.dataset} ({cell.setting}) is "
                      f"no longer under {out}/protocols; rerun the table")


def _located(cell: CellResult, backbone: str | None) -> dict:
    """The cell's cell.json, its backbone found at `backbone` (`--backbone`: the model
    has moved since the run; it must be the same model, by sha256)."""
    if backbone is None:
        return cell.meta
    from molorec.backbone import relocate

    config = dict(cell.meta["config"])
    config["backbone"] = relocate(config["backbone"], backbone)
    return {**cell.meta, "config": config}


def figures(out: Path, which: Sequence[int], prompts: Sequence[int],
            wanted: Sequence[str], log: Callable[[str], None] = print,
            backbone: str | None = None) -> list[Path]:
    """Write the requested figures under OUT/figures; returns the files written."""
    from reports import figures as F

    bad = sorted(set(which) - {4, 5})
    if bad:
        raise OptionError(f"--figures: no figure {bad[0]}; choose 4 and/or 5")
    # the figures are of the default tables (other candidate counts: `bench robustness`)
    cells = [c for c in finished_cells(out, log) if c.negatives == DEFAULT_NEGATIVES]
    written: list[Path] = []
    with outdir.locked(out):
        dest = out / "figures"
        if 4 in which:
            rows = F.mixture_rows(cells, wanted)
            if rows:
                written += F.plot_mixture(rows, dest).values()
            else:
                log(f"figure 4: no {MOLOREC} cell with mixture weights in {', '.join(wanted)}; "
                    "skipped")
        if 5 in which:
            written += _figure5(out, cells, prompts, wanted, dest, log, backbone)
    return written


def _figure5(out: Path, cells: list[CellResult], prompts: Sequence[int],
             wanted: Sequence[str], dest: Path, log: Callable[[str], None],
             backbone: str | None = None) -> list[Path]:
    from molorec.analysis import prompt_count_points
    from reports import figures as F

    mine = [c for c in cells if _is(c, MOLOREC) and c.setting in wanted
            and c.meta.get("describe", {}).get("mixture_method") == "entropy"]
    if not mine:
        log(f"figure 5: no entropy-guided {MOLOREC} cell in {', '.join(wanted)}; skipped")
        return []
    rows = []
    for c in mine:
        rows += prompt_count_points(_protocol_of(out, c), _located(c, backbone), prompts,
                                    out / "cache", log=log)
    refs = []
    for name in REFERENCE_ROWS:
        for key in {(c.dataset, c.setting) for c in mine}:
            same = [c for c in cells if _is(c, name) and (c.dataset, c.setting) == key]
            if same:
                refs.append({"dataset": key[0], "setting": key[1], "system": same[0].system,
                             "value": sum(c.mean("NDCG@1") for c in same) / len(same)})
    return list(F.plot_prompt_counts(rows, dest, refs).values())


def _pick(cells: list[CellResult], what: str, value, options: Sequence) -> object:
    if value is not None:
        if value not in options:
            raise OptionError(f"no {MOLOREC} cell with {what} {value!r} (have: "
                              f"{', '.join(map(str, options)) or 'none'})")
        return value
    if what == "dataset" and len(options) > 1:
        raise OptionError(f"{MOLOREC} cells on several datasets ({', '.join(options)}): "
                          "choose one with --dataset")
    if not options:
        raise OptionError(f"no {MOLOREC} cell for this table: run it with {MOLOREC} first")
    return sorted(options)[0]


def explain(out: Path, user: str, table: str, setting: str | None, dataset: str | None,
            seed: int | None, backbone: str | None = None) -> tuple[str, Path]:
    """The case study of `user`: Markdown text and the file it was written to."""
    from molorec.explain import case_study, to_markdown

    tables = settings.tables()
    setting = setting or tables[table][0]
    if setting not in tables[table]:
        raise OptionError(f"setting {setting!r} is not one of table {table!r}'s "
                          f"({', '.join(tables[table])})")
    cells = [c for c in finished_cells(out, print) if _is(c, MOLOREC) and c.setting == setting
             and c.negatives == DEFAULT_NEGATIVES]
    names = sorted({c.dataset for c in cells})
    if dataset is not None:  # typed in any case, like every dataset name
        dataset = {n.casefold(): n for n in names}.get(dataset.casefold(), dataset)
    dataset = _pick(cells, "dataset", dataset, names)
    seed = _pick(cells, "seed", seed, sorted({c.seed for c in cells if c.dataset == dataset}))
    cell = next(c for c in cells if (c.dataset, c.seed) == (dataset, seed))
    proto = _protocol_of(out, cell)
    if user not in {r.user for r in proto.test_requests}:
        some = ", ".join(r.user for r in proto.test_requests[:5])
        raise OptionError(f"user {user!r} is not a test user of {dataset} ({setting}); "
                          f"e.g. {some}")
    with outdir.locked(out):
        cell_dir = out / "cells" / _slug(dataset) / setting / _slug(MOLOREC) / f"seed-{seed}"
        cs = case_study(proto, _located(cell, backbone), cell_dir, user, out / "cache")
        text = to_markdown(cs)
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{dataset}-{setting}-seed{seed}-user-{user}")
        path = out / "explain" / f"{slug}.md"
        atomic_write_text(path, text)
    return text, path
