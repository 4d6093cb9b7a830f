"""The import graph is one-way: protocols <- bench <- reports, the systems (baselines,
molorec) on top. Every import counts, including those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYER = {"protocols": 0, "bench": 1, "reports": 2, "baselines": 3, "molorec": 3}
# they compose every layer: the top (bench.cli_analysis: `bench figures`, `bench explain`)
COMMAND_LINE = {"bench.cli", "bench.__main__", "bench.cli_analysis"}
SYSTEMS = {"baselines", "molorec"}


def imported(source: str) -> set[str]:
    """Absolute module names a source file imports, anywhere in it."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return {m for m in out if m.split(".")[0] in LAYER}


def layer(module: str) -> int:
    return 4 if module in COMMAND_LINE else LAYER[module.split(".")[0]]


def edges() -> list[tuple[str, str]]:
    out = []
    for package in LAYER:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out += [(module, m) for m in sorted(imported(path.read_text(encoding="utf-8")))]
    return out


def test_the_parser_sees_imports_inside_functions():
    src = "import os\nfrom bench import api\ndef f():\n    from reports.tables import x\n"
    assert imported(src) == {"bench", "reports.tables"}


def test_nothing_below_imports_from_above():
    up = [f"{a} imports {b}" for a, b in edges() if layer(b) > layer(a)]
    assert not up, "imports against the layers:\n" + "\n".join(up)


@pytest.mark.parametrize("family", sorted(SYSTEMS))
def test_systems_use_the_harness_not_the_reports_or_each_other(family):
    bad = [f"{a} imports {b}" for a, b in edges() if a.split(".")[0] == family
           and (b.startswith("reports") or (b.split(".")[0] in SYSTEMS - {family}))]
    assert not bad, "\n".join(bad)


def test_plugins_keep_their_imports():
    from bench import api

    for name in ("System", "TrainData", "Validation", "ScoreRequest", "UserSequence", "GROUPS"):
        assert hasattr(api, name), name
