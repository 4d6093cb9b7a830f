"""The paper's published numbers (MoLoRec, Tables 1-3), transcribed by hand.

Kept only to be shown beside our rows as a labelled block: they come from other datasets
(Amazon Beauty/Toys/Sports, MovieLens-1M), another backbone (Qwen2-7B) and candidate sets we
do not have, so they never take part in bold/underline or significance tests.
Source: /work/shared/seeds/molorec-paper.txt (tests/test_reports.py checks every row against it).
"""

from __future__ import annotations

from typing import Any

DATASETS = ("Beauty", "Toys", "Sports", "MovieLens-1M")
METRICS = ("NDCG@1", "NDCG@3")
# Row values are in this column order: dataset-major, then metric.
COLUMNS = tuple((d, m) for d in DATASETS for m in METRICS)
GROUPS = (
    ("Traditional", ("BPR-MF", "GRU4Rec", "SASRec", "FMLP-Rec")),
    ("Transferable", ("UniSRec", "VQ-Rec")),
    ("LLM-Based", ("Qwen2-7B", "RecFormer", "P5", "TALLRec")),
    ("Ours", ("MoLoRec-G", "MoLoRec-S", "MoLoRec")),
)

PAPER: dict[str, dict[str, Any]] = {
    "table1": {
        "title": "Published (paper, Table 1)",
        "setting": "warm-start (I.I.D.)",
        "columns": COLUMNS,
        "groups": GROUPS,
        # The paper marks every MoLoRec value bold* (best, significant at p < 0.05).
        "starred": ("MoLoRec",),
        "rows": {
            "BPR-MF": (0.1630, 0.2588, 0.1276, 0.2056, 0.1496, 0.2338, 0.1724, 0.4185),
            "GRU4Rec": (0.1672, 0.2752, 0.1320, 0.2243, 0.1787, 0.2829, 0.1724, 0.4423),
            "SASRec": (0.2410, 0.3284, 0.2223, 0.3105, 0.1957, 0.2967, 0.2257, 0.4708),
            "FMLP-Rec": (0.2988, 0.4000, 0.2994, 0.3990, 0.2645, 0.3812, 0.2410, 0.5515),
            "UniSRec": (0.2654, 0.4089, 0.2612, 0.3998, 0.2341, 0.3721, 0.2615, 0.5594),
            "VQ-Rec": (0.2714, 0.4157, 0.2715, 0.4119, 0.2476, 0.3944, 0.2805, 0.5745),
            "Qwen2-7B": (0.0300, 0.0394, 0.0843, 0.1062, 0.0170, 0.0242, 0.0814, 0.1057),
            "RecFormer": (0.2858, 0.3840, 0.3001, 0.3880, 0.2667, 0.3885, 0.2743, 0.5701),
            "P5": (0.1775, 0.2482, 0.1171, 0.1709, 0.1860, 0.2674, 0.2046, 0.2947),
            "TALLRec": (0.3208, 0.3479, 0.3308, 0.3583, 0.3002, 0.3274, 0.4759, 0.4971),
            "MoLoRec-G": (0.3081, 0.3316, 0.2957, 0.3209, 0.2750, 0.2998, 0.5680, 0.5918),
            "MoLoRec-S": (0.4079, 0.4291, 0.4076, 0.4314, 0.3735, 0.3925, 0.5460, 0.5703),
            "MoLoRec": (0.4132, 0.4350, 0.4097, 0.4334, 0.3754, 0.3944, 0.5783, 0.6023),
        },
    },
    "table2": {
        "title": "Published (paper, Table 2)",
        "setting": "new-item / cold-start (O.O.D.)",
        "columns": COLUMNS,
        "groups": GROUPS,
        "starred": ("MoLoRec",),
        "rows": {
            "BPR-MF": (0.0306, 0.0688, 0.0333, 0.0765, 0.0350, 0.0739, 0.0723, 0.1421),
            "GRU4Rec": (0.0562, 0.1063, 0.0447, 0.0926, 0.0640, 0.0996, 0.0798, 0.1489),
            "SASRec": (0.0656, 0.1368, 0.0670, 0.1210, 0.0547, 0.1203, 0.0912, 0.1891),
            "FMLP-Rec": (0.0587, 0.1229, 0.0537, 0.1117, 0.0545, 0.1236, 0.1145, 0.1947),
            "UniSRec": (0.0957, 0.1457, 0.0814, 0.1559, 0.0832, 0.1408, 0.0985, 0.1343),
            "VQ-Rec": (0.1189, 0.1589, 0.0957, 0.1603, 0.0985, 0.1463, 0.1025, 0.1412),
            "Qwen2-7B": (0.0187, 0.0260, 0.0293, 0.0356, 0.0213, 0.0273, 0.0318, 0.0407),
            "RecFormer": (0.1051, 0.1687, 0.0913, 0.1592, 0.0922, 0.1489, 0.1108, 0.1547),
            "P5": (0.0871, 0.1466, 0.0755, 0.1358, 0.0758, 0.1355, 0.0957, 0.1319),
            "TALLRec": (0.1415, 0.1674, 0.1251, 0.1524, 0.1226, 0.1486, 0.1458, 0.1668),
            "MoLoRec-G": (0.1746, 0.2072, 0.1474, 0.1710, 0.1581, 0.1868, 0.1455, 0.1890),
            "MoLoRec-S": (0.1603, 0.1863, 0.1504, 0.1764, 0.1564, 0.1867, 0.1636, 0.2597),
            "MoLoRec": (0.1825, 0.2145, 0.1614, 0.1821, 0.1646, 0.1921, 0.1818, 0.2755),
        },
    },
    "table3": {
        "title": "Published (paper, Table 3)",
        "setting": "few-shot training on MovieLens-1M",
        # The text does not name Table 3's metric; its cold 10% MoLoRec value equals the
        # Table 2 MoLoRec-G NDCG@1 on MovieLens-1M (0.1455), so NDCG@1 is the likely one.
        "metric": "NDCG@1 (inferred: the paper's text does not name it)",
        "systems": ("TALLRec", "2nd Finetune", "MoLoRec"),
        # (scenario, sample %) -> values in `systems` order
        "rows": {
            ("Warm-Start", "10%"): (0.3957, 0.0704, 0.5353),
            ("Warm-Start", "20%"): (0.4298, 0.0790, 0.5454),
            ("Warm-Start", "30%"): (0.4563, 0.0540, 0.5498),
            ("Cold-Start", "10%"): (0.1091, 0.0000, 0.1455),
            ("Cold-Start", "20%"): (0.1091, 0.0182, 0.1636),
            ("Cold-Start", "30%"): (0.1273, 0.0000, 0.1636),
        },
    },
}

# The paper's column order: a dataset name containing one of these keys (case and
# punctuation dropped) sorts into that slot, e.g. "amazon2014-Toys_and_Games", "ml-1m".
DATASET_ORDER = (("beauty",), ("toys",), ("sports",), ("movielens1m", "ml1m"))


def value(table: str, system: str, dataset: str, metric: str) -> float:
    """One published Table 1/2 number, e.g. value('table1', 'MoLoRec', 'Beauty', 'NDCG@1')."""
    t = PAPER[table]
    return t["rows"][system][t["columns"].index((dataset, metric))]


def published_block(table: str) -> dict[str, Any]:
    """A renderable block: title, note, header (label columns then numeric ones), spans
    (optional (label, width) headers above the numeric columns), rows of strings, n_labels."""
    if table not in PAPER:
        raise KeyError(f"no published table {table!r}; have {sorted(PAPER)}")
    t = PAPER[table]
    if table == "table3":
        header = ("Scenario", "Sample %", *t["systems"])
        rows, last = [], None
        for (sc, pct), vals in t["rows"].items():
            rows.append((sc if sc != last else "", pct, *(f"{v:.4f}" for v in vals)))
            last = sc
        note = (f"{t['setting']}; metric {t['metric']}. Printed values; not part of our "
                "comparison (no bold/underline/tests).")
        return {"title": t["title"], "note": note, "header": header, "spans": None,
                "rows": rows, "n_labels": 2}
    header = ("Group", "Method", *(m for _, m in t["columns"]))
    spans = [(d, len(METRICS)) for d in DATASETS]
    rows = []
    for group, systems in t["groups"]:
        for n, system in enumerate(systems):
            star = "*" if system in t["starred"] else ""
            rows.append((group if n == 0 else "", system,
                         *(f"{v:.4f}{star}" for v in t["rows"][system])))
    note = (f"{t['setting']}; Amazon Beauty/Toys/Sports and MovieLens-1M, Qwen2-7B backbone. "
            "Printed values (* as printed: best, t-test p < 0.05); not part of our "
            "comparison (no bold/underline/tests).")
    return {"title": t["title"], "note": note, "header": header, "spans": spans,
            "rows": rows, "n_labels": 2}
