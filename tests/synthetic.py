"""Synthetic RecBole atomic datasets of a real dataset's shape (for benchmarks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SHAPES = {  # users, items, interactions (MovieLens' published sizes)
    "ml-1m": (6_040, 3_706, 1_000_209),
    "ml-10m": (71_567, 10_681, 10_000_054),
}


def write_synthetic(root: Path, shape: str, seed: int = 0) -> Path:
    """Write <root>/<name>/<name>.inter and .item; each user rates a contiguous block of a
    permuted catalogue, with heavy-tailed lengths (>= 20, like MovieLens) and some equal
    timestamps. Returns the dataset directory."""
    n_users, n_items, n_inter = SHAPES[shape]
    name = f"synth-{shape}"
    out = Path(root) / name
    if (out / f"{name}.inter").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    raw = rng.lognormal(0.0, 1.0, n_users)
    lo, hi, cap = 0.0, 10.0 * n_inter / raw.sum(), int(0.65 * n_items)
    for _ in range(60):  # scale so that the clipped lengths sum to about n_inter
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.clip(raw * mid, 20, cap).round().sum() < n_inter else (lo, mid)
    lengths = np.clip(raw * lo, 20, cap).round().astype(np.int64)
    room = np.flatnonzero(lengths < cap)[: n_inter - lengths.sum()]
    lengths[room] += 1  # exact total
    user = np.repeat(np.arange(n_users), lengths)
    pos = np.arange(n_inter) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    perm = rng.permutation(n_items)
    start = rng.integers(0, n_items, n_users)
    item = perm[(start[user] + pos) % n_items]
    ts = 978_300_000 + np.repeat(rng.integers(0, 10**7, n_users), lengths) + pos * 30 // 2
    lines = np.char.add(np.char.add(user.astype(str), "\t"), item.astype(str))
    lines = np.char.add(np.char.add(lines, "\t"), ts.astype(str))
    with open(out / f"{name}.inter", "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        f.write("\n".join(lines.tolist()))
        f.write("\n")
    with open(out / f"{name}.item", "w") as f:
        f.write("item_id:token\ttitle:token_seq\n")
        f.write("".join(f"{i}\tSynthetic movie {i}\n" for i in range(n_items)))
    return out
