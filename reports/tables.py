"""Comparison tables (the paper's Tables 1-3) built from stored per-user cell results.

One `Table` object holds every number and mark; it renders to Markdown, LaTeX and a dict.
Building is a pure function of the results, so a table can always be re-rendered from the
cell directories alone. Marks follow the paper: bold = best, underline = second best, `*` =
best differs from the runner-up by a two-sided paired t-test over per-user values, Holm-
corrected across all best-vs-runner-up comparisons of the table. Reference rows (Random,
Pop) are sanity floors: shown apart, never marked or tested. Every system in a column must
have been scored on the same candidate file(s): one file for all seeds, or one per seed when
the runner builds a protocol per seed (then the paired units are (seed's file, user)).

Layout: systems as rows (Tables 1 and 2), or, when every setting's spec names its row
(scenario, share), settings as rows and systems as columns (Table 3, reports.by_setting);
the marks are the same, computed per (dataset, setting, metric). The metrics shown are the
settings' (`SettingSpec.metrics`) unless the caller names them. A cell's describe() may
hold `rates` ({label: share}, e.g. the invalid-answer rate in generate mode): shown beside
its system in the Table 3 layout, averaged over seeds, never marked or tested.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.api import GROUPS
from bench.results import CellResult
from protocols import settings
from protocols.options import DEFAULT_NEGATIVES, FULL, ProtocolOptions
from protocols.stats import holm, paired_ttest
from protocols.store import atomic_write_texts
from reports import by_setting, paper_reference, render

COMPARED_GROUPS = ("Traditional", "Transferable", "LLM-Based", "Ours")
REFERENCE_GROUP = "Reference"
TIE_ATOL = 1e-12  # means closer than this are ties (float noise from averaging over seeds)


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


@dataclass(frozen=True)
class Candidates:
    """One candidate file behind a column: its hash, the seeds run on it, its users."""

    sha256: str
    seeds: tuple[int, ...]
    n_users: int


@dataclass(frozen=True)
class Column:
    dataset: str
    setting: str
    metric: str
    candidates: tuple[Candidates, ...]  # one, or one per seed when each seed has its own
    heading: str = ""  # the column's label without the metric (the setting's spec says)

    @property
    def candidates_sha256(self) -> str | None:
        return self.candidates[0].sha256 if len(self.candidates) == 1 else None

    @property
    def n_units(self) -> int:
        """Paired units: users (averaged over seeds sharing a file), summed over files."""
        return sum(c.n_users for c in self.candidates)


@dataclass(frozen=True)
class Cell:
    mean: float
    mark: str = ""  # "best" | "second" | ""
    star: bool = False


@dataclass(frozen=True)
class Row:
    system: str
    group: str
    seeds: tuple[int, ...]
    cells: tuple[Cell | None, ...]  # aligned with Table.columns; None = not run
    failed: bool = False  # the system raised: no values, the row says so

    @property
    def reference(self) -> bool:
        return self.group == REFERENCE_GROUP


@dataclass(frozen=True)
class Comparison:
    """One best-vs-runner-up paired t-test (a member of the table's Holm family)."""

    column: int
    best: str
    runner_up: str
    p: float
    p_holm: float
    significant: bool


@dataclass(frozen=True)
class Table:
    """A renderer-agnostic comparison table; see the module docstring for the marks."""

    name: str
    paper_table: str | None  # the paper's table its settings mirror (reports.paper_reference)
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]  # compared groups in display order, then reference rows
    comparisons: tuple[Comparison, ...]
    caption: str
    alpha: float = 0.05
    published: dict[str, Any] | None = field(default=None)
    layout: str = "systems"  # "systems": a row per system; "settings": a row per setting
    # (system, dataset, setting) -> {label: mean over seeds} from the cells' describe()
    rates: dict[tuple[str, str, str], dict[str, float]] = field(default_factory=dict)

    def column_label(self, j: int, with_metric: bool = True) -> str:
        c = self.columns[j]
        head = c.heading or c.dataset
        return f"{head} {c.metric}" if with_metric else head

    def groups(self) -> list[tuple[str, list[Row]]]:
        """Non-empty groups in display order (compared groups first, Reference last)."""
        out = []
        for g in (*COMPARED_GROUPS, REFERENCE_GROUP):
            rows = [r for r in self.rows if r.group == g]
            if rows:
                out.append((g, rows))
        return out

    def setting_row(self, j: int) -> tuple[str, str]:
        """(scenario, share) of column j's setting, in the Table 3 layout."""
        spec = settings.find(self.columns[j].setting)
        if spec is None or spec.row is None:
            return (self.columns[j].setting, "")
        return spec.row

    def rate_labels(self, system: str) -> list[str]:
        """The rate labels any of `system`'s cells reports, in first-seen order."""
        return list(dict.fromkeys(label for (s, _, _), r in self.rates.items() if s == system
                                  for label in r))

    def to_markdown(self) -> str:
        if self.layout == "settings":
            return by_setting.markdown(self)
        return render.markdown(self)

    def to_latex(self) -> str:
        if self.layout == "settings":
            return by_setting.latex(self)
        return render.latex(self)

    def to_latex_document(self) -> str:
        return render.latex_document(self)

    def to_dict(self) -> dict[str, Any]:
        cols = [{"dataset": c.dataset, "setting": c.setting, "metric": c.metric,
                 "candidates_sha256": c.candidates_sha256, "n_units": c.n_units,
                 "candidates": [{"sha256": k.sha256, "seeds": list(k.seeds),
                                 "n_users": k.n_users} for k in c.candidates],
                 "label": self.column_label(j)} for j, c in enumerate(self.columns)]
        rows = [{"system": r.system, "group": r.group, "reference": r.reference,
                 "seeds": list(r.seeds), "failed": r.failed,
                 "cells": [None if c is None else
                           {"mean": c.mean, "mark": c.mark or None, "star": c.star}
                           for c in r.cells]} for r in self.rows]
        comps = [{"column": cmp.column, "label": self.column_label(cmp.column),
                  "best": cmp.best, "runner_up": cmp.runner_up, "p": cmp.p,
                  "p_holm": cmp.p_holm, "significant": cmp.significant}
                 for cmp in self.comparisons]
        pub = None
        if self.published is not None:
            pub = {**self.published, "header": list(self.published["header"]),
                   "rows": [list(r) for r in self.published["rows"]]}
        return {"name": self.name, "paper_table": self.paper_table, "alpha": self.alpha,
                "test": "two-sided paired t-test over per-user values averaged over seeds "
                        "sharing a candidate file (pairs: (candidate file, user))",
                "correction": "holm", "columns": cols, "rows": rows, "comparisons": comps,
                "caption": self.caption, "published": pub, "layout": self.layout,
                "rates": [{"system": s, "dataset": d, "setting": st, "rates": r}
                          for (s, d, st), r in self.rates.items()]}


# ----------------------------------------------------------------------------- building


def _check(r: CellResult, metrics: Sequence[str]) -> None:
    where = f"cell {r.table}/{r.dataset}/{r.setting}/{r.system}/seed {r.seed}"
    if r.group not in GROUPS:
        raise ValueError(f"{where}: unknown group {r.group!r}; use one of {GROUPS}")
    if len(set(r.users)) != len(r.users):
        raise ValueError(f"{where}: duplicate user ids")
    for m in metrics:
        if m not in r.values:
            raise ValueError(f"{where}: no per-user values for metric {m!r}")
        v = np.asarray(r.values[m], dtype=np.float64)
        if v.shape != (len(r.users),):
            raise ValueError(f"{where}: {m} has shape {v.shape}, expected ({len(r.users)},)")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{where}: {m} has non-finite values")


def _natural(s: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def _dataset_key(d: str) -> tuple:
    """The paper's column order (data in reports.paper_reference), then natural order."""
    n = _norm(d)
    for rank, keys in enumerate(paper_reference.DATASET_ORDER):
        if any(k in n for k in keys):
            return (rank, _natural(d))
    return (len(paper_reference.DATASET_ORDER), _natural(d))


def _headings(ds_keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """A column's label per (dataset, setting): the setting spec's `column` (e.g.
    "ml-100k 10%"); for an unregistered setting the dataset, naming the setting where
    the dataset appears under several; any label left twice names its setting."""
    out = {}
    for d, s in ds_keys:
        spec = settings.find(s)
        several = sum(1 for d2, _ in ds_keys if d2 == d) > 1
        out[(d, s)] = (spec.column.format(dataset=d) if spec is not None
                       else f"{d} ({s})" if several else d)
    labels = list(out.values())
    return {k: f"{v} ({k[1]})" if labels.count(v) > 1 else v for k, v in out.items()}


def _units(cells: list[CellResult], metrics: Sequence[str]
           ) -> tuple[list[tuple[str, str]], dict[str, np.ndarray]]:
    """Paired units of one system in one column: per-user values averaged over the seeds
    that share a candidate file, keyed (candidates_sha256, user) and sorted by that key.
    With one candidate file this is the per-user average over seeds; with one file per
    seed (the runner builds a protocol per seed) each (seed's file, user) is a unit."""
    by_hash: dict[str, list[CellResult]] = {}
    for c in cells:
        by_hash.setdefault(c.candidates_sha256, []).append(c)
    keys: list[tuple[str, str]] = []
    parts: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    for h in sorted(by_hash):
        group = by_hash[h]
        users = sorted(group[0].users)
        for c in group[1:]:
            if sorted(c.users) != users:
                raise ValueError(f"{c.system} on {c.dataset}/{c.setting}: seed {c.seed} has "
                                 f"other users than seed {group[0].seed} on the same candidate "
                                 f"file {h[:12]}; cannot average per user")
        keys += [(h, u) for u in users]
        for m in metrics:
            stack = []
            for c in group:
                pos = {u: n for n, u in enumerate(c.users)}
                stack.append(np.asarray(c.values[m], dtype=np.float64)[[pos[u] for u in users]])
            parts[m].append(np.mean(stack, axis=0))
    return keys, {m: np.concatenate(v) for m, v in parts.items()}


def _notes_text(notes: str | Sequence[str] | Mapping[str, Any] | None) -> list[str]:
    if notes is None:
        return []
    if isinstance(notes, str):
        return [notes]
    if isinstance(notes, Mapping):
        return [f"{k}: {v}" for k, v in notes.items()]
    return [str(n) for n in notes]


def _mark_column(values: dict[str, float]) -> tuple[list[str], list[str]]:
    """(best systems, second-best systems) among compared rows; ties within TIE_ATOL."""
    if not values:
        return [], []
    top = max(values.values())
    best = [s for s, v in values.items() if abs(v - top) <= TIE_ATOL]
    rest = {s: v for s, v in values.items() if s not in best}
    if not rest:
        return best, []
    second_v = max(rest.values())
    return best, [s for s, v in rest.items() if abs(v - second_v) <= TIE_ATOL]


def build_table(results: Iterable[CellResult], *, table: str | None = None,
                metrics: Sequence[str] | None = None,
                order: Sequence[str] | None = None,
                notes: str | Sequence[str] | Mapping[str, Any] | None = None,
                reference: str | None = None, alpha: float = 0.05,
                failed: Mapping[str, str] | None = None) -> Table:
    """Aggregate cells (one per dataset/setting/system/seed) into a marked comparison table.

    `table` keeps only results of that table name (all results must share one otherwise);
    `metrics` default to the settings' (SettingSpec.metrics; NDCG@1 and NDCG@3 otherwise);
    `order` (row labels; callers pass the registry's) fixes the row order within groups,
    rows not in it following in the order they come; `notes` are appended to the caption;
    `reference="paper"` adds the paper's published numbers as a separate block;
    `failed` (row label -> group) adds rows marked failed, with no values.
    """
    results = list(results)
    if table is not None:
        results = [r for r in results if r.table == table]
        if not results:
            raise ValueError(f"no results for table {table!r}")
    if not results:
        raise ValueError("no results to tabulate")
    names = {r.table for r in results}
    if len(names) > 1:
        raise ValueError(f"results mix tables {sorted(names)}; pass table= to pick one")
    name = names.pop()
    metrics = tuple(metrics) if metrics is not None else _spec_metrics(results)
    if not metrics:
        raise ValueError("need at least one metric")
    if reference not in (None, "paper"):
        raise ValueError(f"reference must be None or 'paper', got {reference!r}")

    cells: dict[tuple[str, str, str], list[CellResult]] = {}
    groups: dict[str, str] = {}
    seen: set[tuple] = set()
    for r in results:
        _check(r, metrics)
        key = (r.dataset, r.setting, r.system, r.seed)
        if key in seen:
            raise ValueError(f"duplicate cell {name}/{r.dataset}/{r.setting}/{r.system}/"
                             f"seed {r.seed}")
        seen.add(key)
        if groups.setdefault(r.system, r.group) != r.group:
            raise ValueError(f"system {r.system!r} appears in groups {groups[r.system]!r} "
                             f"and {r.group!r}")
        cells.setdefault((r.dataset, r.setting, r.system), []).append(r)

    # Every system in a column must have been scored on the same candidate file(s):
    # otherwise the numbers are not comparable. Several files are accepted only as seed
    # replicates (one protocol per seed) that every system in the column shares.
    files: dict[tuple[str, str], dict[str, frozenset[str]]] = {}
    for (d, s, system), cs in cells.items():
        files.setdefault((d, s), {})[system] = frozenset(c.candidates_sha256 for c in cs)
    for (d, s), per_system in files.items():
        if len(set(per_system.values())) > 1:
            detail = "; ".join(f"{system}: {', '.join(sorted(h[:12] for h in hs))}"
                               for system, hs in per_system.items())
            raise ValueError(f"dataset {d!r} ({s}) mixes candidate files (candidates_sha256 "
                             f"differ between systems), refusing to put them in one column: "
                             f"{detail}")

    per_unit: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}
    units_of: dict[tuple[str, str], tuple[list[tuple[str, str]], str]] = {}
    for (d, s, system), cs in sorted(cells.items()):
        cs.sort(key=lambda c: c.seed)
        keys, vals = _units(cs, metrics)
        per_unit[(d, s, system)] = vals
        prev = units_of.setdefault((d, s), (keys, system))
        if prev[0] != keys:
            raise ValueError(f"dataset {d!r} ({s}): {system} and {prev[1]} were scored on "
                             "different users; a paired test needs the same users")

    ds_keys = sorted(units_of, key=lambda k: (_dataset_key(k[0]), _natural(k[1])))
    cand: dict[tuple[str, str], tuple[Candidates, ...]] = {}
    for d, s in ds_keys:
        seeds_of: dict[str, set[int]] = {}
        for (d2, s2, _), cs in cells.items():
            if (d2, s2) == (d, s):
                for c in cs:
                    seeds_of.setdefault(c.candidates_sha256, set()).add(c.seed)
        n_of = {h: sum(1 for k in units_of[(d, s)][0] if k[0] == h) for h in seeds_of}
        cand[(d, s)] = tuple(sorted((Candidates(h, tuple(sorted(seeds_of[h])), n_of[h])
                                     for h in seeds_of), key=lambda c: (c.seeds, c.sha256)))
    heads = _headings(ds_keys)
    columns = tuple(Column(d, s, m, cand[(d, s)], heads[(d, s)]) for d, s in ds_keys
                    for m in metrics)

    failed = {k: v for k, v in (failed or {}).items() if k not in groups}
    for label, group in failed.items():
        if group not in GROUPS:
            raise ValueError(f"failed row {label!r}: unknown group {group!r}")
    # rows: by group, then `order` (the registry's, from the caller), then as they came
    ranked = [*(order or ()), *dict.fromkeys([*(r.system for r in results), *failed])]
    systems = sorted({**groups, **failed}, key=lambda x: (
        (*COMPARED_GROUPS, REFERENCE_GROUP).index(groups.get(x) or failed[x]),
        ranked.index(x)))
    # A system's value: the mean over its seeds of each seed's mean over users.
    means = {(system, j): float(np.mean([c.mean(col.metric)
                                         for c in cells[(col.dataset, col.setting, system)]]))
             for system in groups for j, col in enumerate(columns)
             if (col.dataset, col.setting, system) in cells}

    marks: dict[tuple[str, int], str] = {}
    raw: list[tuple[int, str, str, float]] = []
    for j, c in enumerate(columns):
        vals = {s: means[(s, j)] for s in systems
                if s in groups and groups[s] != REFERENCE_GROUP and (s, j) in means}
        best, second = _mark_column(vals)
        marks.update({(s, j): "best" for s in best})
        marks.update({(s, j): "second" for s in second})
        if len(best) == 1 and second:
            # Several tied runners-up: keep the least significant one (conservative).
            col = {s: per_unit[(c.dataset, c.setting, s)][c.metric] for s in (*best, *second)}
            p, runner = max((paired_ttest(col[best[0]], col[s]), s) for s in second)
            raw.append((j, best[0], runner, p))
    adjusted = holm([p for *_, p in raw]) if raw else []
    comparisons = tuple(Comparison(j, b, ru, p, pa, pa < alpha)
                        for (j, b, ru, p), pa in zip(raw, adjusted, strict=True))
    starred = {(cmp.best, cmp.column) for cmp in comparisons if cmp.significant}

    rows = tuple(
        Row(system, failed[system], (), (None,) * len(columns), failed=True)
        if system in failed else
        Row(system, groups[system],
            tuple(sorted({c.seed for (d, s, sy), cs in cells.items() if sy == system
                          for c in cs})),
            tuple(Cell(means[(system, j)], marks.get((system, j), ""),
                       (system, j) in starred) if (system, j) in means else None
                  for j in range(len(columns))))
        for system in systems)

    specs = [sp for sp in dict.fromkeys(settings.find(s) for _, s in ds_keys) if sp is not None]
    paper = {sp.paper_table for sp in specs}
    published = None
    if reference == "paper":
        if len(paper) != 1 or None in paper:
            raise ValueError(f"table {name!r} matches no paper table: its settings "
                             f"({', '.join(sorted({s for _, s in ds_keys}))}) name "
                             f"{', '.join(sorted(map(str, paper))) or 'none'}")
        published = paper_reference.published_block(next(iter(paper)))
    width = {r.n_candidates for r in results if r.n_candidates}
    counts = {r.negatives for r in results}
    if len(counts) > 1:
        raise ValueError(f"results mix candidate counts ({', '.join(map(str, counts))}); "
                         "a table ranks one count (protocols.options.negatives_suffix)")
    n_cand: int | str = (FULL if counts == {FULL} else width.pop() if len(width) == 1
                         else ProtocolOptions().n_candidates)
    by_rows = all((sp := settings.find(s)) is not None and sp.row is not None
                  for _, s in ds_keys)
    layout = "settings" if by_rows else "systems"
    caption = _caption(name, specs, columns, rows, len(comparisons), alpha, metrics,
                       _notes_text(notes), ds_keys, n_cand, layout)
    return Table(name, next(iter(paper)) if len(paper) == 1 else None, columns, rows,
                 comparisons, caption, alpha, published, layout, _rates(cells))


def _spec_metrics(results: Sequence[CellResult]) -> tuple[str, ...]:
    """The metrics the results' settings ask for (their specs agree), else the default."""
    found = {sp.metrics for r in results if (sp := settings.find(r.setting)) is not None}
    return found.pop() if len(found) == 1 else ("NDCG@1", "NDCG@3")


def _rates(cells: Mapping[tuple[str, str, str], list[CellResult]]
           ) -> dict[tuple[str, str, str], dict[str, float]]:
    """(system, dataset, setting) -> each rate its cells' describe() reports, mean over
    the seeds that report it."""
    out: dict[tuple[str, str, str], dict[str, float]] = {}
    for (d, s, system), cs in sorted(cells.items()):
        found: dict[str, list[float]] = {}
        for c in cs:
            for label, v in ((c.meta.get("describe") or {}).get("rates") or {}).items():
                found.setdefault(str(label), []).append(float(v))
        if found:
            out[(system, d, s)] = {k: float(np.mean(v)) for k, v in found.items()}
    return out


def _files_text(cands: tuple[Candidates, ...]) -> str:
    if len(cands) == 1:
        return f"{cands[0].sha256[:12]} ({cands[0].n_users} users)"
    return ", ".join(f"{k.sha256[:12]} (seed{'s' if len(k.seeds) > 1 else ''} "
                     f"{', '.join(map(str, k.seeds))}; {k.n_users} users)" for k in cands)


def _caption(name, specs, columns, rows, n_tests, alpha, metrics, notes, ds_keys,
             n_cand, layout="systems") -> str:
    what = "; ".join(dict.fromkeys(sp.title for sp in specs)) or name
    files = {(c.dataset, c.setting): c.candidates for c in columns}
    sharing: dict[tuple, list[str]] = {}  # (dataset, files) -> the settings ranking them
    for d, s in ds_keys:
        sharing.setdefault((d, files[(d, s)]), []).append(s)
    cands = []
    for (d, cand), ss in sharing.items():  # one entry per dataset when its settings share
        alone = sum(1 for k in sharing if k[0] == d) == 1
        label = d if alone else f"{d} ({', '.join(ss)})"
        cands.append(f"{label} {_files_text(cand)}")
    per_seed = any(len(c.candidates) > 1 for c in columns)
    unit = ("per-user values (averaged over seeds that share a candidate file; each seed "
            "has its own protocol here, so the pairs are (seed, user))" if per_seed else
            "per-user values (averaged over seeds)")
    seed_sets = {r.seeds for r in rows if not r.failed}
    if len(seed_sets) == 1:
        seeds = ", ".join(map(str, next(iter(seed_sets))))
    else:
        seeds = "; ".join(f"{r.system}: {', '.join(map(str, r.seeds))}" for r in rows
                          if not r.failed)
    ranks = (f"each test user ranks 1 positive + {n_cand - 1} sampled negatives ({n_cand} "
             "candidates)" if n_cand != FULL else
             "full ranking: each test user ranks every item of the test pool they have not "
             "interacted with (warm: the catalogue; cold: the new items); model selection on "
             f"validation stays at 1 positive + {DEFAULT_NEGATIVES} sampled negatives")
    parts = [
        f"Table {name}: {what}.",
        *dict.fromkeys(sp.protocol for sp in specs),
        f"{ranks}; tie rule: expected value over tied orderings; "
        f"metrics {', '.join(metrics)}, mean over users.",
        f"Candidates sha256 (first 12 hex): {'; '.join(cands)}.",
        f"Seeds: {seeds}; a value is the mean over seeds.",
        ("Bold: best; underlined: second best, among compared rows (Reference rows excluded). "
         if layout == "systems" else "Bold: best; underlined: second best, in each row among "
         "the compared systems (Reference columns excluded). ") +
        f"*: best vs runner-up significant, two-sided paired t-test over {unit}, "
        f"p < {alpha:g} after Holm correction across the table's "
        f"{n_tests} best-vs-runner-up comparison{'s' if n_tests != 1 else ''}; "
        "ties for best get no star.",
    ]
    if any(r.reference for r in rows):
        parts.append(f"Reference {'rows' if layout == 'systems' else 'columns'} are sanity "
                     "floors, not compared.")
    parts += [n if n.endswith(".") else n + "." for n in notes]
    return " ".join(parts)


# ----------------------------------------------------------------------------- writing


def render_all(results: Iterable[CellResult], out_dir: str | Path, table_name: str,
               reference: str | None = None, **kwargs: Any) -> dict[str, Path]:
    """Write <table>.md, <table>.tex (fragment), <table>.standalone.tex and <table>.json
    atomically; `kwargs` go to build_table (metrics, order, notes, alpha)."""
    if not table_name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", table_name):
        raise ValueError(f"table name {table_name!r} is not a safe file name")
    t = build_table(results, table=table_name, reference=reference, **kwargs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = {"md": (f"{table_name}.md", t.to_markdown()),
             "tex": (f"{table_name}.tex", t.to_latex()),
             "tex_document": (f"{table_name}.standalone.tex", t.to_latex_document()),
             "json": (f"{table_name}.json", json.dumps(t.to_dict(), indent=2) + "\n")}
    atomic_write_texts({out / fname: text for fname, text in texts.values()})
    return {key: out / fname for key, (fname, _) in texts.items()}
