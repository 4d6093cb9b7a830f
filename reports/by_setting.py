"""The paper's Table 3 layout of a `reports.tables.Table`: settings as rows (scenario x
share, e.g. Warm-Start 10%), systems as columns, with the same marks as the other layout.

A system's rates (e.g. the invalid-answer rate in generate mode) follow its metric
columns, as percentages; they are facts about a cell, never marked or tested.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from reports import render

if TYPE_CHECKING:
    from reports.tables import Row, Table


def _row_keys(table: Table) -> list[tuple[str, str]]:
    """(dataset, setting) of each table row, in column order."""
    return list(dict.fromkeys((c.dataset, c.setting) for c in table.columns))


def _systems(table: Table) -> list[Row]:
    return [r for _, rows in table.groups() for r in rows]


def _heads(table: Table) -> list[tuple[Row, str, str | None, str]]:
    """(system row, metric or None for a rate, rate label, header) per value column."""
    several = len({c.metric for c in table.columns}) > 1
    out = []
    for r in _systems(table):
        name = f"{r.system} (reference)" if r.reference else r.system
        for m in dict.fromkeys(c.metric for c in table.columns):
            out.append((r, m, None, f"{name} {m}" if several else name))
        out += [(r, None, lab, f"{r.system} {lab}") for lab in table.rate_labels(r.system)]
    return out


def _labels(table: Table) -> list[tuple[list[str], tuple[str, str]]]:
    """Label cells per row (Dataset when several, Scenario on a block's first row, share)."""
    keys = _row_keys(table)
    several = len({d for d, _ in keys}) > 1
    out, last = [], None
    for d, s in keys:
        j = next(j for j, c in enumerate(table.columns) if (c.dataset, c.setting) == (d, s))
        scenario, share = table.setting_row(j)
        first = (d, scenario) != last
        last = (d, scenario)
        cells = [d if first else ""] if several else []
        out.append(([*cells, scenario if first else "", share], (d, s)))
    return out


def _value(table: Table, row: Row, metric: str | None, rate: str | None,
           key: tuple[str, str], fmt) -> str:
    if row.failed:
        return render.FAILED
    if rate is not None:
        v = table.rates.get((row.system, *key), {}).get(rate)
        return "n/a" if v is None else f"{100 * v:.1f}%"
    j = next(j for j, c in enumerate(table.columns)
             if (c.dataset, c.setting, c.metric) == (*key, metric))
    return fmt(row.cells[j])


def _label_header(table: Table) -> list[str]:
    several = len({d for d, _ in _row_keys(table)}) > 1
    return [*(["Dataset"] if several else []), "Scenario", "Sample %"]


def markdown(table: Table) -> str:
    """GitHub pipe table, the caption under it, then any published block."""
    heads = _heads(table)
    header = _label_header(table) + [render.escape_markdown(h) for *_, h in heads]
    rows = [[render.escape_markdown(x) for x in labels]
            + [_value(table, r, m, rate, key, render._md_value) for r, m, rate, _ in heads]
            for labels, key in _labels(table)]
    lines = render._md_pipe(header, rows, len(header) - len(heads))
    lines += ["", render.escape_markdown(table.caption)]
    if table.published is not None:
        lines += render._md_published(table.published)
    return "\n".join(lines) + "\n"


def latex(table: Table) -> str:
    """A booktabs `table` float; one \\midrule block per scenario."""
    heads = _heads(table)
    n_labels = len(_label_header(table))
    leaves = [render.escape_latex(h) for h in _label_header(table) + [h for *_, h in heads]]
    blocks: list[list[list[str]]] = []
    for labels, key in _labels(table):
        if any(labels[:-1]) or not blocks:
            blocks.append([])
        values = [_value(table, r, m, rate, key, render._tex_value) for r, m, rate, _ in heads]
        blocks[-1].append([render.escape_latex(x) for x in labels] + [
            r"\textit{failed}" if v == render.FAILED else v.replace("%", r"\%")
            for v in values])
    label = "tab:" + re.sub(r"[^A-Za-z0-9:-]", "-", table.name)
    lines = [r"\begin{table}[htbp]", r"\centering", r"\footnotesize",
             r"\setlength{\tabcolsep}{4pt}",
             rf"\caption{{{render.escape_latex(table.caption)}}}", rf"\label{{{label}}}",
             *render._tex_tabular(n_labels, None, leaves, blocks)]
    if table.published is not None:
        lines += render._published_tabular(table.published)
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"
