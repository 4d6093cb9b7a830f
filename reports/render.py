"""Markdown and LaTeX renderings of a `reports.tables.Table` (pure string functions)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reports.tables import Cell, Table

REFERENCE_LABEL = "Reference (not compared)"
FAILED = "failed"  # the value shown in every column of a row whose system raised
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
}
_LATEX_RE = re.compile("|".join(re.escape(c) for c in _LATEX_SPECIAL))
_MD_RE = re.compile(r"([\\|*_`\[\]])")


def escape_latex(text: str) -> str:
    """Escape LaTeX special characters in plain text (system names, captions)."""
    return _LATEX_RE.sub(lambda m: _LATEX_SPECIAL[m.group()], text)


def escape_markdown(text: str) -> str:
    """Escape characters that would break a pipe table or turn into emphasis/HTML."""
    return _MD_RE.sub(r"\\\1", text).replace("<", "&lt;").replace(">", "&gt;")


def _group_label(group: str) -> str:
    return REFERENCE_LABEL if group == "Reference" else group


def _labelled_rows(table: Table) -> list[tuple[str, str, Any]]:
    """(group label on a group's first row else '', system, row) in display order."""
    out = []
    for group, rows in table.groups():
        for n, row in enumerate(rows):
            out.append((_group_label(group) if n == 0 else "", row.system, row))
    return out


# ----------------------------------------------------------------------------- Markdown


def _md_value(cell: Cell | None) -> str:
    if cell is None:
        return "n/a"
    v = f"{cell.mean:.4f}"
    if cell.mark == "best":
        return f"**{v}**" + ("\\*" if cell.star else "")
    if cell.mark == "second":
        return f"<u>{v}</u>"
    return v


def _md_pipe(header: list[str], rows: list[list[str]], n_labels: int) -> list[str]:
    align = [":---"] * n_labels + ["---:"] * (len(header) - n_labels)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _md_published(block: dict[str, Any]) -> list[str]:
    n = block["n_labels"]
    header = list(block["header"][:n])
    leaves = list(block["header"][n:])
    if block.get("spans"):
        it = iter(leaves)
        header += [f"{lab} {next(it)}" for lab, width in block["spans"] for _ in range(width)]
    else:
        header += leaves
    rows = [[escape_markdown(c) if k < n else c.replace("*", "\\*") for k, c in enumerate(r)]
            for r in block["rows"]]
    return ["", f"**{block['title']}**: {escape_markdown(block['note'])}", "",
            *_md_pipe([escape_markdown(h) for h in header], rows, n)]


def markdown(table: Table) -> str:
    """GitHub pipe table, the caption as a paragraph under it, then any published block."""
    header = ["Group", "Method"] + [escape_markdown(table.column_label(j))
                                    for j in range(len(table.columns))]
    rows = [[escape_markdown(g), escape_markdown(s)]
            + [FAILED if row.failed else _md_value(c) for c in row.cells]
            for g, s, row in _labelled_rows(table)]
    lines = _md_pipe(header, rows, 2) + ["", escape_markdown(table.caption)]
    if table.published is not None:
        lines += _md_published(table.published)
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- LaTeX


def _tex_value(cell: Cell | None) -> str:
    if cell is None:
        return "--"
    v = f"{cell.mean:.4f}"
    if cell.mark == "best":
        return rf"\textbf{{{v}}}" + ("$^{*}$" if cell.star else "")
    if cell.mark == "second":
        return rf"\underline{{{v}}}"
    return v


def _tex_spans(spans: list[tuple[str, int]], first_col: int) -> list[str]:
    """A spanning header row plus its \\cmidrule underlines."""
    heads, rules, col = [], [], first_col
    for label, width in spans:
        heads.append(rf"\multicolumn{{{width}}}{{c}}{{{escape_latex(label)}}}")
        rules.append(rf"\cmidrule(lr){{{col}-{col + width - 1}}}")
        col += width
    return [" & " * (first_col - 1) + " & ".join(heads) + r" \\", " ".join(rules)]


def _tex_tabular(n_labels: int, spans: list[tuple[str, int]] | None, leaves: list[str],
                 body: list[list[list[str]]]) -> list[str]:
    """A booktabs tabular; `body` is a list of row blocks separated by \\midrule."""
    lines = [rf"\begin{{tabular}}{{{'l' * n_labels}{'r' * (len(leaves) - n_labels)}}}",
             r"\toprule"]
    if spans:
        lines += _tex_spans(spans, n_labels + 1)
    lines.append(" & ".join(leaves) + r" \\")
    for block in body:
        lines.append(r"\midrule")
        lines += [" & ".join(r) + r" \\" for r in block]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return lines


def _ours_tabular(table: Table) -> list[str]:
    spans: list[tuple[str, int]] = []
    for j in range(len(table.columns)):
        head = table.column_label(j, with_metric=False)
        if spans and spans[-1][0] == head:
            spans[-1] = (head, spans[-1][1] + 1)
        else:
            spans.append((head, 1))
    leaves = ["Group", "Method"] + [escape_latex(c.metric) for c in table.columns]
    body = []
    for group, rows in table.groups():
        body.append([[escape_latex(_group_label(group)) if n == 0 else "",
                      escape_latex(r.system),
                      *(r"\textit{failed}" if r.failed else _tex_value(c) for c in r.cells)]
                     for n, r in enumerate(rows)])
    return _tex_tabular(2, spans, leaves, body)


def _published_tabular(block: dict[str, Any]) -> list[str]:
    n = block["n_labels"]
    leaves = [escape_latex(h) for h in block["header"]]
    blocks: list[list[list[str]]] = []
    for r in block["rows"]:
        if r[0] or not blocks:  # a new group starts a new \midrule block
            blocks.append([])
        blocks[-1].append([escape_latex(c) if k < n else c.replace("*", "$^{*}$")
                           for k, c in enumerate(r)])
    return [r"\par\medskip\scriptsize", rf"\textbf{{{escape_latex(block['title'])}}}: "
            rf"{escape_latex(block['note'])}\par\smallskip",
            *_tex_tabular(n, block.get("spans"), leaves, blocks)]


def latex(table: Table) -> str:
    """A `table` float (booktabs) with the caption; the published block, if any, below."""
    label = "tab:" + re.sub(r"[^A-Za-z0-9:-]", "-", table.name)
    lines = [r"\begin{table}[htbp]", r"\centering", r"\footnotesize",
             r"\setlength{\tabcolsep}{4pt}", rf"\caption{{{escape_latex(table.caption)}}}",
             rf"\label{{{label}}}", *_ours_tabular(table)]
    if table.published is not None:
        lines += _published_tabular(table.published)
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def latex_document(table: Table) -> str:
    """A minimal standalone article around the table's LaTeX (compiles with pdflatex)."""
    return "\n".join([r"\documentclass{article}", r"\usepackage{booktabs}",
                      r"\begin{document}", table.to_latex().rstrip("\n"),
                      r"\end{document}"]) + "\n"
