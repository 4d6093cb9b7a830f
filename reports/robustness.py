"""Do a table's conclusions survive other candidate counts? (`bench robustness`)

Sampled metrics can reorder systems relative to full ranking (Krichene and Rendle, KDD
2020). This reads the finished runs of one table at several counts (warm, warm-n99,
warm-nall: protocols.options.negatives_suffix) and sets side by side, per (dataset,
setting): each row's mean NDCG@1 / NDCG@3 and its rank at each count, Kendall's tau-b
between each count's ordering and the base count's (the default, 1 + 29, when stored),
and whether the significance decisions stay the same: each best-vs-runner-up test (the
tables' own, reports.tables: paired t-test, Holm across the table) and each row against
one row (MoLoRec by default: paired t-test over the same per-user units, Holm across every
row-vs-that-row test of the count's table). Nothing is recomputed from models: every
number comes from the verified cells, so it is as reproducible as the tables are.

Ranks include the Reference rows (Random, Pop): whether a model still beats popularity
at another count is part of the question. A rank is 1 + the number of rows with a higher
mean (means within reports.tables.TIE_ATOL are tied and share a rank).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.results import CellResult
from protocols.errors import OutputError
from protocols.options import DEFAULT_NEGATIVES, FULL, split_suffix
from protocols.stats import holm, paired_ttest
from protocols.store import atomic_write_texts
from reports.render import escape_latex, escape_markdown
from reports.tables import REFERENCE_GROUP, TIE_ATOL, Table, build_table
from reports.tables import _units as paired_units

Count = int | str
METRICS = ("NDCG@1", "NDCG@3")


def count_label(n: Count) -> str:
    return "full" if n == FULL else f"1+{n}"


def count_key(n: Count) -> tuple[int, int]:
    """Sampled counts ascending, full ranking last."""
    return (1, 0) if n == FULL else (0, int(n))


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b of two score lists over the same items (ties within TIE_ATOL count
    as ties); nan when either list is constant (no ordering to compare)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"kendall_tau needs equal lengths, got {a.shape} and {b.shape}")
    i, j = np.triu_indices(len(a), k=1)
    da, db = a[i] - a[j], b[i] - b[j]
    sa = np.where(np.abs(da) <= TIE_ATOL, 0, np.sign(da))
    sb = np.where(np.abs(db) <= TIE_ATOL, 0, np.sign(db))
    n_a, n_b = int((sa != 0).sum()), int((sb != 0).sum())
    if n_a == 0 or n_b == 0:
        return float("nan")
    return float((sa * sb).sum() / np.sqrt(n_a * n_b))


def ranks(values: Mapping[str, float]) -> dict[str, int]:
    """1 + the number of rows with a higher mean (ties share a rank)."""
    return {s: 1 + sum(1 for w in values.values() if w - v > TIE_ATOL)
            for s, v in values.items()}


@dataclass(frozen=True)
class Decision:
    """One significance decision at one count: `winner` is the higher row (None when the
    means tie), `significant` after the count's Holm correction."""

    first: str
    second: str
    winner: str | None
    p_holm: float | None
    significant: bool

    def key(self) -> tuple:
        return (self.first, self.second, self.winner, self.significant)


def _by_count(cells: Sequence[CellResult], table: str) -> dict[Count, list[CellResult]]:
    out: dict[Count, list[CellResult]] = {}
    for c in cells:
        base, n = split_suffix(c.table)
        if base == table:
            out.setdefault(n, []).append(c)
    return dict(sorted(out.items(), key=lambda kv: count_key(kv[0])))


def _versus(cells: Sequence[CellResult], table: Table, against: str, alpha: float
            ) -> dict[tuple[str, str, str, str], Decision]:
    """(dataset, setting, metric, row) -> the row against `against`, Holm over the table."""
    by: dict[tuple[str, str, str], list[CellResult]] = {}
    for c in cells:
        by.setdefault((c.dataset, c.setting, c.system), []).append(c)
    compared = {r.system for r in table.rows if not r.reference and not r.failed}
    if against not in compared:
        return {}
    metrics = tuple(dict.fromkeys(col.metric for col in table.columns))
    raw: list[tuple[tuple[str, str, str, str], str | None, float]] = []
    for d, s in dict.fromkeys((col.dataset, col.setting) for col in table.columns):
        if (d, s, against) not in by:
            continue
        _, ref = paired_units(by[(d, s, against)], metrics)
        for row in sorted(compared - {against}):
            if (d, s, row) not in by:
                continue
            _, vals = paired_units(by[(d, s, row)], metrics)
            for m in metrics:
                diff = float(np.mean(vals[m]) - np.mean(ref[m]))
                winner = None if abs(diff) <= TIE_ATOL else row if diff > 0 else against
                raw.append(((d, s, m, row), winner, paired_ttest(vals[m], ref[m])))
    adjusted = holm([p for *_, p in raw]) if raw else []
    return {k: Decision(k[3], against, w, pa, pa < alpha and w is not None)
            for (k, w, _), pa in zip(raw, adjusted, strict=True)}


def analyse(cells: Sequence[CellResult], table: str, against: str = "MoLoRec",
            metrics: Sequence[str] = METRICS, alpha: float = 0.05,
            order: Sequence[str] | None = None,
            left_out: Mapping[Count, Mapping[str, str]] | None = None) -> dict[str, Any]:
    """The robustness of `table` across the counts its cells were run at (see the module
    docstring); a JSON-ready dict, rendered by `to_markdown` / `to_latex`."""
    groups = _by_count(cells, table)
    if len(groups) < 2:
        found = ", ".join(count_label(n) for n in groups) or "none"
        raise OutputError(f"table {table!r} is stored at {found} candidate count(s); run it "
                          "at another too (`python -m bench run --table "
                          f"{table} --negatives 99`, or `--negatives all`)")
    counts = list(groups)
    base = DEFAULT_NEGATIVES if DEFAULT_NEGATIVES in groups else counts[0]
    tables = {n: build_table(cs, table=cs[0].table, metrics=metrics, order=order, alpha=alpha)
              for n, cs in groups.items()}
    means: dict[tuple, dict[str, float]] = {}
    group_of: dict[str, str] = {}
    row_order: list[str] = []
    best: dict[tuple, Decision] = {}
    for n, t in tables.items():
        for r in t.rows:
            group_of.setdefault(r.system, r.group)
            row_order += [r.system] if r.system not in row_order else []
            for j, col in enumerate(t.columns):
                if r.cells[j] is not None:
                    means.setdefault((col.dataset, col.setting, col.metric, n), {})[
                        r.system] = r.cells[j].mean
        for cmp in t.comparisons:
            col = t.columns[cmp.column]
            best[(col.dataset, col.setting, col.metric, n)] = Decision(
                cmp.best, cmp.runner_up, cmp.best, cmp.p_holm, cmp.significant)
    blocks = list(dict.fromkeys((d, s) for d, s, _, _ in means))
    out_blocks = []
    for d, s in blocks:
        rows = [x for x in row_order if any(x in means.get((d, s, m, n), {})
                                            for m in metrics for n in counts)]
        rank_at = {n: ranks(means.get((d, s, metrics[0], n), {})) for n in counts}
        taus = {}
        for m in metrics:
            ref = means.get((d, s, m, base), {})
            for n in counts:
                if n == base:
                    continue
                other = means.get((d, s, m, n), {})
                shared = [x for x in rows if x in ref and x in other]
                tau = kendall_tau([ref[x] for x in shared], [other[x] for x in shared])
                taus[f"{m} {count_label(n)}"] = {
                    "tau": None if np.isnan(tau) else tau, "rows": len(shared)}
        best_rows = []
        for m in metrics:
            ref = best.get((d, s, m, base))
            for n in counts:
                b = best.get((d, s, m, n))
                best_rows.append({
                    "metric": m, "count": n, "best": b.first if b else None,
                    "runner_up": b.second if b else None, "p_holm": b.p_holm if b else None,
                    "significant": bool(b and b.significant),
                    "same": None if n == base else (
                        (b.key() if b else None) == (ref.key() if ref else None))})
        out_blocks.append({
            "dataset": d, "setting": s,
            "rows": [{"system": x, "group": group_of[x], "values": {
                count_label(n): {**{m: means.get((d, s, m, n), {}).get(x) for m in metrics},
                                 "rank": rank_at[n].get(x)} for n in counts}} for x in rows],
            "kendall_tau": taus, "best_vs_runner_up": best_rows})
    versus = {n: _versus(groups[n], tables[n], against, alpha) for n in counts}
    vs_rows = []
    keys = list(dict.fromkeys(k for n in counts for k in versus[n]))
    for k in keys:
        ref = versus[base].get(k)
        per = {count_label(n): (None if k not in versus[n] else {
            "winner": versus[n][k].winner, "p_holm": versus[n][k].p_holm,
            "significant": versus[n][k].significant}) for n in counts}
        seen = [n for n in counts if k in versus[n]]
        # a decision made at one count only is not "the same at every count": not compared
        same = None if ref is None or len(seen) < 2 else all(
            versus[n][k].key() == ref.key() for n in seen)
        vs_rows.append({"dataset": k[0], "setting": k[1], "metric": k[2], "row": k[3],
                        "at": per, "same": same})
    missing = [count_label(n) for n in counts if not versus[n]]
    return {"table": table, "against": against, "metrics": list(metrics), "alpha": alpha,
            "counts": [count_label(n) for n in counts], "base": count_label(base),
            "tables": {count_label(n): t.name for n, t in tables.items()},
            "blocks": out_blocks, "versus": vs_rows, "versus_missing": missing,
            "left_out": {count_label(n): dict(v) for n, v in (left_out or {}).items() if v},
            "reference_group": REFERENCE_GROUP}


def _f(x: float | None, fmt: str = ".4f") -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, fmt)


def _yes(x: bool | None) -> str:
    return "–" if x is None else "yes" if x else "**no**"


def _decision(d: dict | None) -> str:
    if d is None:
        return "–"
    who = d["winner"] or "tie"
    return f"{who} {'*' if d['significant'] else ''}(p {_f(d['p_holm'], '.3g')})"


def to_markdown(r: dict[str, Any]) -> str:
    counts, metrics = r["counts"], r["metrics"]
    shown = ", ".join(f"{c} (table {r['tables'][c]})" for c in counts)
    lines = [f"# Robustness of table {r['table']} to the candidate count", "",
             f"Counts: {shown}; base "
             f"{r['base']}. Rank by {metrics[0]} among all rows (Reference rows included); "
             "1 + k means 1 positive + k sampled negatives, full: every item the user has "
             "not interacted with. Significance: two-sided paired t-test over per-user "
             f"values, Holm-corrected within each count's table, p < {r['alpha']:g}.", ""]
    for c, left in r["left_out"].items():
        lines += [f"Left out at {c}: " + "; ".join(f"{escape_markdown(k)} ({v})"
                                                  for k, v in left.items()) + ".", ""]
    for b in r["blocks"]:
        lines += [f"## {escape_markdown(b['dataset'])} ({b['setting']})", ""]
        head = ["row"] + [f"{m} {c}" for c in counts for m in metrics] + [
            f"rank {c}" for c in counts]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in b["rows"]:
            v = row["values"]
            cols = [escape_markdown(row["system"])]
            cols += [_f(v[c][m]) for c in counts for m in metrics]
            cols += [_f(v[c]["rank"], "d") for c in counts]
            lines.append("| " + " | ".join(cols) + " |")
        lines += ["", f"Kendall's tau-b against the {r['base']} ordering: " + "; ".join(
            f"{k}: {_f(t['tau'], '.3f')} ({t['rows']} rows)"
            for k, t in b["kendall_tau"].items()) + ".", "",
            "Best vs runner-up (the table's marks):", "",
            "| metric | count | best | runner-up | p (Holm) | significant | same as "
            f"{r['base']} |", "|---|---|---|---|---|---|---|"]
        for x in b["best_vs_runner_up"]:
            lines.append(f"| {x['metric']} | {count_label(x['count'])} | "
                         f"{escape_markdown(x['best'] or '–')} | "
                         f"{escape_markdown(x['runner_up'] or '–')} | {_f(x['p_holm'], '.3g')}"
                         f" | {_yes(x['significant'])} | {_yes(x['same'])} |")
        lines.append("")
    vs = r["versus"]
    if vs:
        lines += [f"## Each row against {escape_markdown(r['against'])}", "",
                  "The higher row, * if significant (p: Holm-adjusted).", "",
                  "| dataset | setting | metric | row | " + " | ".join(counts) +
                  " | same at every count |", "|" + "---|" * (5 + len(counts))]
        for x in vs:
            lines.append(f"| {escape_markdown(x['dataset'])} | {x['setting']} | {x['metric']} | "
                         f"{escape_markdown(x['row'])} | "
                         + " | ".join(_decision(x["at"][c]) for c in counts)
                         + f" | {_yes(x['same'])} |")
        lines.append("")
    if r["versus_missing"]:
        lines += [f"No {escape_markdown(r['against'])} row at "
                  f"{', '.join(r['versus_missing'])}: no row-vs-{escape_markdown(r['against'])} "
                  "tests there.", ""]
    return "\n".join(lines)


def to_latex(r: dict[str, Any]) -> str:
    """One tabular per (dataset, setting): means and ranks at each count, tau below."""
    counts, metrics = r["counts"], r["metrics"]
    out = []
    for b in r["blocks"]:
        n_cols = len(counts) * (len(metrics) + 1)
        out += ["\\begin{table}[t]", "\\centering", "\\small",
                f"\\begin{{tabular}}{{l{'c' * n_cols}}}", "\\toprule",
                " & " + " & ".join(f"\\multicolumn{{{len(metrics) + 1}}}{{c}}"
                                   f"{{{escape_latex(c)}}}" for c in counts) + " \\\\",
                "Row & " + " & ".join(" & ".join([*map(escape_latex, metrics), "rank"])
                                      for _ in counts) + " \\\\", "\\midrule"]
        for row in b["rows"]:
            v = row["values"]
            cells = [x for c in counts for x in
                     [*(_f(v[c][m]) for m in metrics), _f(v[c]["rank"], "d")]]
            out.append(escape_latex(row["system"]) + " & "
                       + " & ".join(c.replace("–", "--") for c in cells) + " \\\\")
        taus = "; ".join(f"{escape_latex(k)}: {_f(t['tau'], '.3f')}"
                         for k, t in b["kendall_tau"].items())
        out += ["\\bottomrule", "\\end{tabular}",
                f"\\caption{{Table {escape_latex(r['table'])}, "
                f"{escape_latex(b['dataset'])} ({escape_latex(b['setting'])}) at "
                f"{escape_latex(', '.join(counts))} candidates. Rank by "
                f"{escape_latex(metrics[0])}. Kendall's $\\tau_b$ against "
                f"{escape_latex(r['base'])}: {taus}.}}", "\\end{table}", ""]
    return "\n".join(out)


def plot_ranks(r: dict[str, Any], out_dir: Path, stem: str) -> dict[str, Path]:
    """Rank (by the first metric) of each row against the count, one panel per block."""
    from reports.figures import _csv_text, _pyplot, _save

    plt = _pyplot()
    counts, blocks = r["counts"], r["blocks"]
    fig, axes = plt.subplots(1, len(blocks), figsize=(4.5 * len(blocks), 3.6), squeeze=False)
    rows_csv = []
    # 16 rows outnumber any qualitative palette: 20 colours, then the marker tells apart
    colours, markers = plt.get_cmap("tab20").colors, "osD^v<>p"
    for ax, b in zip(axes[0], blocks, strict=True):
        for k, row in enumerate(b["rows"]):
            ys = [row["values"][c]["rank"] for c in counts]
            xs = [i for i, y in enumerate(ys) if y is not None]
            ax.plot(xs, [ys[i] for i in xs], marker=markers[k % len(markers)],
                    color=colours[k % len(colours)], label=row["system"],
                    linestyle="--" if row["group"] == r["reference_group"] else "-")
            rows_csv += [{"dataset": b["dataset"], "setting": b["setting"],
                          "system": row["system"], "count": c, "rank": row["values"][c]["rank"],
                          **{m: row["values"][c][m] for m in r["metrics"]}} for c in counts]
        ax.set_xticks(range(len(counts)), counts)
        ax.invert_yaxis()
        ax.set_xlabel("candidates (1 + negatives)")
        ax.set_ylabel(f"rank by {r['metrics'][0]} (1 = best)")
        ax.set_title(f"{b['dataset']} ({b['setting']})", fontsize=9)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fields = ("dataset", "setting", "system", "count", "rank", *r["metrics"])
    try:
        return _save(fig, out_dir, stem, _csv_text(fields, rows_csv))
    finally:
        plt.close(fig)


def write_report(out: Path, table: str, against: str = "MoLoRec",
                 log: Callable[[str], None] = print) -> dict[str, Path]:
    """`bench robustness`: OUT/<table>.robustness.md/.tex/.json and the figure
    OUT/figures/<table>-robustness.png/.svg/.csv, from the verified stored cells (rows
    that failed in a count's last run are left out, as `report` does)."""
    from bench import outdir
    from bench.stored import finished_cells, stored_failures
    from reports.publish import check_one_backbone, row_order, stored_left_out

    out = Path(out)
    cells = finished_cells(out, log)
    names = {c.table for c in cells if split_suffix(c.table)[0] == table}
    failed = {t: stored_failures(out, t, log) for t in names}
    kept = [c for c in cells if c.table in names
            and c.system not in {f["label"] for f in failed[c.table]}]
    left = {split_suffix(t)[1]: stored_left_out(out, t, log) for t in names}
    check_one_backbone(kept, f"{table} at every candidate count")
    report = analyse(kept, table, against, order=row_order(kept, []), left_out=left)
    texts = {"md": to_markdown(report), "tex": to_latex(report),
             "json": json.dumps(report, indent=2, default=str) + "\n"}
    paths: dict[str, Path] = {}
    with outdir.locked(out):
        for kind in texts:
            paths[kind] = out / f"{table}.robustness.{kind}"
        atomic_write_texts({paths[kind]: text for kind, text in texts.items()})
        for kind, path in plot_ranks(report, out / "figures", f"{table}-robustness").items():
            paths[f"figure_{kind}"] = path
    return paths
