"""`python -m bench gpu-check`: the paper profile's LLM rows on a small, fixed slice, to
check a GPU machine and size the full run before spending GPU-days on it.

What it runs: the warm table of MovieLens-1M with the paper profile's settings, `--users`
seeded users per part (the domain-general corpus is the other part's users, so nothing but
ML-1M is needed), one seed, every LLM row (the zero-shot backbone, TALLRec, RecLoRA,
MoLoRec-G, MoLoRec-S, MoLoRec, 2nd Finetune), on `--backbone`. Then, where vLLM is
installed, the zero-shot row's scores from the hf and the vLLM backends on the same test
users, side by side. What it writes (OUT/gpu-check.md, and printed): one Markdown table,
ready for BENCHMARKS.md, with each row's fit and score seconds, scoring speed in users
per second, peak GPU memory of the cell's process (torch's allocator: vLLM's engine in
its own process is not counted), and the projected GPU-hours of that row over the paper's
warm, cold and few-shot tables: fit scales with the training users, scoring with the test
users, each linearly from this slice (a rough guide: prompt lengths differ by dataset,
and the domain-general LoRA, trained once per backbone and corpus, learns from a corpus far
larger than the slice's other half: ML-10M's 71,567 users, the eight Amazon categories'
247,872).

It needs the backbone (`--backbone`: a directory, a cached model id or a .gguf file) and
ML-1M's raw files (`python -m bench data download ml-1m` on a machine with network, then
copy `$MOLOREC_BENCH_DATA/ml-1m`, or give its folder with `--data-path`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from protocols.errors import OptionError

LLM_ROWS = ("Backbone", "TALLRec", "RecLoRA", "MoLoRec-G", "MoLoRec-S", "MoLoRec",
            "2nd-Finetune")
# users of the paper's datasets after 5-core filtering (the paper's Table 4), and how
# many cells of each table a row runs on them (3 seeds; warm and cold on all four, the
# few-shot table's six settings on ML-1M for its three rows)
PAPER_USERS = {"amazon2014-Beauty": 22363, "amazon2014-Toys_and_Games": 19412,
               "amazon2014-Sports_and_Outdoors": 35598, "ml-1m": 6040}
SEEDS = 3
FEWSHOT_ROWS = ("TALLRec", "MoLoRec", "2nd-Finetune")


def projected_gpu_hours(system: str, fit_s: float, score_s: float, users: int) -> float:
    """Hours of the full paper tables for `system`, scaled linearly from a cell of
    `users` training and test users (the user partition halves a dataset's users)."""
    per_user = (fit_s + score_s) / users
    cells = sum(PAPER_USERS.values()) * 2  # warm and cold, every dataset
    if system in FEWSHOT_ROWS:
        cells += PAPER_USERS["ml-1m"] * 6
    return per_user * cells * SEEDS / 3600


def _check_gpu(cpu: bool) -> None:
    import torch

    if not cpu and not torch.cuda.is_available():
        raise OptionError("gpu-check needs a CUDA GPU and found none; `--cpu` runs the same "
                          "slice on the CPU (slow: a 7B model takes hours there)")


def _vllm_agreement(out: Path, backbone: str | None, users: int,
                    log: Callable[[str], None]) -> str:
    """hf against vLLM scores of the zero-shot row on the slice's first test users."""
    import importlib.util

    import numpy as np

    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed in this environment: hf against vLLM not checked."
    from bench import registry
    from bench.runner import Variant
    from protocols.files import load_protocol

    proto = load_protocol(out / "protocols" / "ml-1m" / "warm" / "seed-0")
    requests = proto.test_requests[:users]
    scores = {}
    cls = registry.resolve("Backbone", "paper")
    for backend in ("hf", "vllm"):
        variant = Variant(backbone, overrides=(f'Backbone.ranking.backend="{backend}"',))
        configs, _ = variant.configs({"Backbone": cls}, "paper", log)
        system = cls(configs["Backbone"], 0, str(out / "cache"))
        try:
            system.fit(proto.data, proto.valid)
            scores[backend] = np.asarray(system.score(requests), dtype=float)
        finally:
            system.close()
    diff = float(np.nanmax(np.abs(scores["hf"] - scores["vllm"])))
    same = float(np.mean(np.argmax(scores["hf"], 1) == np.argmax(scores["vllm"], 1)))
    return (f"hf against vLLM, zero-shot row, {len(requests)} test users: largest score "
            f"difference {diff:.2e}; same top candidate for {same:.0%} of users.")


def gpu_check(backbone: str | None, out: Path, *, users: int = 200, cpu: bool = False,
              data_path: str | None = None, systems: Sequence[str] = LLM_ROWS,
              overrides: Sequence[str] = (), log: Callable[[str], None] = print
              ) -> tuple[str, Path]:
    """Run the slice and write OUT/gpu-check.md; returns (its Markdown, its path)."""
    from bench.runner import Variant, run_table

    if isinstance(users, bool) or not isinstance(users, int) or users < 10:
        raise OptionError(f"--users must be an integer >= 10, got {users!r}")
    _check_gpu(cpu)
    out = Path(out)
    run = run_table("warm", "paper", out, datasets=["ml-1m"], systems=list(systems),
                        seeds=[0], data_path=data_path, general_from=[], jobs=1,
                        max_users=users, log=log, variant=Variant(backbone,
                                                                  overrides=tuple(overrides)))
    rows = []
    for cell in sorted((out / "cells" / "ml-1m" / "warm").glob("*/seed-0/cell.json")):
        meta = json.loads(cell.read_text())
        timing = json.loads((cell.parent / "timing.json").read_text())
        tested = sum(1 for _ in open(cell.parent / "scores.jsonl", encoding="utf-8"))
        fit, score = timing["fit_seconds"], timing["score_seconds"]
        rows.append((meta["system"], fit, score, tested / score if score else float("nan"),
                     timing.get("peak_gpu_gib"),
                     projected_gpu_hours(cell.parent.parent.name, fit, score, tested)))
    vllm = (_vllm_agreement(out, backbone, 20, log) if not cpu else
            "hf against vLLM: checked on a GPU only.")
    text = _markdown(rows, run, users, "cpu" if cpu else "cuda", vllm)
    path = out / "gpu-check.md"
    path.write_text(text, encoding="utf-8")
    return text, path


def _markdown(rows: list[tuple], run: Any, users: int, device: str, vllm: str) -> str:
    head = ("| Row | fit s | score s | users/s | peak GPU GiB | projected GPU-h (paper "
            "tables) |\n|:---|---:|---:|---:|---:|---:|\n")
    body = "".join(
        f"| {name} | {fit:.1f} | {score:.1f} | {speed:.2f} | "
        f"{'-' if peak is None else f'{peak:.1f}'} | {hours:.1f} |\n"
        for name, fit, score, speed, peak, hours in rows)
    failed = "".join(f"- failed: {f.line()}\n" for f in run.failures)
    return (f"## gpu-check: ML-1M warm, {users} users per part, seed 0, on {device}\n\n"
            + head + body + "\n" + failed + vllm + "\n\nProjection: (fit + score seconds) "
            "per test user of this slice, times the paper tables' test users (warm and cold "
            f"on {', '.join(PAPER_USERS)}; the few-shot table's six settings on ml-1m for "
            f"{', '.join(FEWSHOT_ROWS)}), times {SEEDS} seeds.\n")
