"""End to end on the smoke profile: every default system, warm and cold tables."""

from __future__ import annotations

import pytest

from bench import profiles, registry
from reports.publish import publish_table


@pytest.mark.slow
@pytest.mark.parametrize("table", ["warm", "cold"])
def test_smoke_table_has_every_default_system(smoke_warm_serial, table):
    out, res = smoke_warm_serial  # the warm run (conftest); cold reuses its general modules
    if table != "warm":
        res = publish_table(table, "smoke", out, log=lambda s: None)
    md = (out / f"{table}.md").read_text()
    for name in profiles.DEFAULT_SYSTEMS:
        cls = registry.resolve(name)
        row = next(c for c in res.results
                   if c.meta["class"] == f"{cls.__module__}:{cls.__qualname__}")
        assert f"| {row.system} |" in md or f"| {row.system} " in md
        assert len(row.users) == len(res.results[0].users)
    assert res.results[0].candidates_sha256[:12] in md
    assert (out / f"{table}.tex").exists()
