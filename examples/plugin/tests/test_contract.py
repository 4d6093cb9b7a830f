"""A plugin's own test: the harness's contract check (`pytest` in examples/plugin)."""

from bench_example_plugin import ItemCoOccurrence

from bench.testing import check_system


def test_item_cooccurrence_keeps_the_contract():
    checked = check_system(ItemCoOccurrence)
    assert checked.scores.max() > 0  # it learned some co-occurrences
