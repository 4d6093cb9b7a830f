"""The paper's analysis figures, drawn with matplotlib (Agg), each as PNG and SVG plus the
CSV of the numbers behind it.

Figure 4: the learned mixture weights, domain-general vs domain-specific LoRA, per
transformer block, one panel per setting (warm against cold). Read from stored cells:
any cell whose describe() holds `weights_by_block` and `adapters_order` (MoLoRec's), no
training. Figure 5: test NDCG@1 against the number of unlabeled prompts the entropy-guided
mixture learns on (an analysis curve: nothing in the tables is chosen from it); the points
are computed by the caller (molorec.analysis), this module only draws them.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.results import CellResult
from protocols.store import atomic_write_text

MIXTURE_FIELDS = ("dataset", "setting", "system", "seed", "block", "module", "weight")
PROMPT_FIELDS = ("dataset", "setting", "seed", "n_prompts", "ndcg@1", "entropy_lr",
                 "table_n_prompts", "table_n_prompts_selected")
SETTING_TITLES = {"warm": "Warm-start", "cold": "Cold-start (new items)"}
COLORS = {"general": "#4C72B0", "specific": "#DD8452"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    # SVG element ids are hashed with this salt (default: random), so that the same data
    # draw byte-identical files
    matplotlib.rcParams["svg.hashsalt"] = "molorec-bench"
    import matplotlib.pyplot as plt

    return plt


def _csv_text(fields: Sequence[str], rows: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in fields})
    return buf.getvalue()


def _save(fig, out_dir: Path, stem: str, csv_text: str) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for ext in ("png", "svg"):
        buf = io.BytesIO() if ext == "png" else io.StringIO()
        fig.savefig(buf, format=ext, dpi=150, bbox_inches="tight",
                    metadata={"Date": None} if ext == "svg" else None)
        path = out_dir / f"{stem}.{ext}"
        tmp = path.with_name(f".{path.name}.tmp")
        if ext == "png":
            tmp.write_bytes(buf.getvalue())
        else:
            tmp.write_text(buf.getvalue(), encoding="utf-8")
        tmp.replace(path)
        paths[ext] = path
    atomic_write_text(out_dir / f"{stem}.csv", csv_text)
    paths["csv"] = out_dir / f"{stem}.csv"
    return paths


def _setting_order(s: str) -> tuple[int, str]:
    return (list(SETTING_TITLES).index(s) if s in SETTING_TITLES else len(SETTING_TITLES), s)


# ----------------------------------------------------------------------------- Figure 4


def mixture_rows(cells: Iterable[CellResult], settings: Sequence[str] = ("warm", "cold")
                 ) -> list[dict[str, Any]]:
    """One row per (cell, block, adapter): the block's mean mixture weight."""
    rows = []
    for c in cells:
        info = c.meta.get("describe") or {}
        blocks, order = info.get("weights_by_block"), info.get("adapters_order")
        if c.setting not in settings or not blocks or not order:
            continue
        for block, weights in sorted(blocks.items(), key=lambda kv: _natural(kv[0])):
            for module, w in zip(order, weights, strict=True):
                rows.append({"dataset": c.dataset, "setting": c.setting, "system": c.system,
                             "seed": c.seed, "block": block, "module": module,
                             "weight": float(w)})
    return sorted(rows, key=lambda r: (r["dataset"], _setting_order(r["setting"]), r["system"],
                                       r["seed"]))


def _natural(text: str) -> list:
    """'layer 2' before 'layer 10' (cell.json stores the blocks with sorted keys)."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


def _block_label(block: str) -> str:
    return block.split()[-1] if block.startswith("layer ") else block


def plot_mixture(rows: Sequence[dict[str, Any]], out_dir: str | Path,
                 stem: str = "figure4-mixture-weights") -> dict[str, Path]:
    """Grouped bars per block, general vs specific (mean over seeds; whiskers: min-max),
    one panel per setting, one row of panels per (dataset, system)."""
    if not rows:
        raise ValueError("no cell holds mixture weights (weights_by_block): run a table "
                         "with MoLoRec first")
    plt = _pyplot()
    lines = list(dict.fromkeys((r["dataset"], r["system"]) for r in rows))
    settings = sorted({r["setting"] for r in rows}, key=_setting_order)
    fig, axes = plt.subplots(len(lines), len(settings), squeeze=False, sharey=True,
                             figsize=(max(5.0, 4.2 * len(settings)), 3.4 * len(lines)))
    for i, (dataset, system) in enumerate(lines):
        for j, setting in enumerate(settings):
            ax = axes[i][j]
            mine = [r for r in rows if (r["dataset"], r["system"], r["setting"]) ==
                    (dataset, system, setting)]
            ax.set_title(f"({chr(97 + i * len(settings) + j)}) "
                         f"{SETTING_TITLES.get(setting, setting)}: {system}, {dataset}",
                         fontsize=10)
            ax.set_ylim(0, 1)
            ax.axhline(0.5, color="0.6", lw=0.8, ls="--", zorder=0)
            if not mine:
                ax.text(0.5, 0.5, "no cell", ha="center", transform=ax.transAxes)
                continue
            blocks = list(dict.fromkeys(r["block"] for r in mine))
            modules = list(dict.fromkeys(r["module"] for r in mine))
            x = np.arange(len(blocks))
            width = 0.8 / len(modules)
            for k, module in enumerate(modules):
                vals = [[r["weight"] for r in mine if (r["block"], r["module"]) == (b, module)]
                        for b in blocks]
                mean = np.array([np.mean(v) for v in vals])
                err = np.array([[m - min(v), max(v) - m] for m, v in zip(mean, vals,
                                                                         strict=True)]).T
                ax.bar(x + (k - (len(modules) - 1) / 2) * width, mean, width,
                       yerr=err if any(len(v) > 1 for v in vals) else None,
                       color=COLORS.get(module), label=f"domain-{module} LoRA", capsize=2)
            step = max(1, len(blocks) // 12)
            ax.set_xticks(x[::step], [_block_label(b) for b in blocks][::step], fontsize=8)
            ax.set_xlabel("transformer block (layer)")
            if j == 0:
                ax.set_ylabel("mixture weight (mean over modules)")
            if i == len(lines) - 1 and j == len(settings) - 1:  # below, clear of the bars
                ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22),
                          ncol=2, frameon=False)
    fig.tight_layout()
    paths = _save(fig, Path(out_dir), stem, _csv_text(MIXTURE_FIELDS, rows))
    plt.close(fig)
    return paths


# ----------------------------------------------------------------------------- Figure 5


def plot_prompt_counts(rows: Sequence[dict[str, Any]], out_dir: str | Path,
                       references: Sequence[dict[str, Any]] = (),
                       stem: str = "figure5-unlabeled-prompts") -> dict[str, Path]:
    """Test NDCG@1 against the number of unlabeled prompts (log x), one panel per
    setting and dataset; the table's own count is ringed; `references` (dataset, setting,
    system, value) are drawn as dashed lines (e.g. MoLoRec-G and MoLoRec-S)."""
    if not rows:
        raise ValueError("no prompt-count points to draw")
    plt = _pyplot()
    panels = sorted({(r["dataset"], r["setting"]) for r in rows},
                    key=lambda k: (k[0], _setting_order(k[1])))
    fig, axes = plt.subplots(1, len(panels), squeeze=False, figsize=(4.6 * len(panels), 3.5))
    for j, (dataset, setting) in enumerate(panels):
        ax = axes[0][j]
        mine = [r for r in rows if (r["dataset"], r["setting"]) == (dataset, setting)]
        counts = sorted({r["n_prompts"] for r in mine})
        mean = [np.mean([r["ndcg@1"] for r in mine if r["n_prompts"] == n]) for n in counts]
        ax.plot(counts, mean, "o-", color="#C44E52", label="MoLoRec (entropy-guided)")
        chosen = {r["table_n_prompts"] for r in mine}
        how = ("chosen on validation" if any(r.get("table_n_prompts_selected") for r in mine)
               else "fixed by the profile")
        for n, v in zip(counts, mean, strict=True):
            if n in chosen:
                ax.plot([n], [v], "o", ms=11, mfc="none", mec="black",
                        label=f"the table's count ({how})")
        for k, ref in enumerate(r for r in references
                                if (r["dataset"], r["setting"]) == (dataset, setting)):
            ax.axhline(ref["value"], ls="--", lw=1, color=f"C{k}", label=ref["system"])
        ax.set_xscale("log")
        ax.set_xticks(counts, [str(n) for n in counts], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("unlabeled test prompts for the mixture weights")
        ax.set_ylabel("test NDCG@1")
        ax.set_title(f"({chr(97 + j)}) {SETTING_TITLES.get(setting, setting)}, {dataset}",
                     fontsize=10)
        # below the axes: a reference line may lie anywhere in the panel
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2,
                  frameon=False)
    fig.tight_layout()
    paths = _save(fig, Path(out_dir), stem, _csv_text(PROMPT_FIELDS, rows))
    plt.close(fig)
    return paths
