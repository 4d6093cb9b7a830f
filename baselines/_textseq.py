"""Shared pieces of the text-based baselines (UniSRec, VQ-Rec, RecFormer, P5).

Item vocabulary over the titles, next-item training samples that honour few-shot
`targets`, a SASRec-style causal transformer, and pretrained weights kept in the run's
artifact store (reused across the cells of one run). Early stopping and padding are
baselines.common's.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from baselines import text_encoder
from baselines.common import pad_right
from bench.api import ScoreRequest, TrainData, UserSequence
from protocols.digest import digest, sequences_digest
from protocols.store import Store

CODE_VERSION = 1  # bump when a change invalidates cached pretrained weights


def pretrain_key(cfg: dict[str, Any], fine_tuning: Sequence[str], seed: int,
                 data: TrainData, **extra: Any) -> dict[str, Any]:
    """Store key of pretrained weights: the code version, every setting except the
    fine-tuning ones, the seed, the general corpus, and `extra` (item texts, the text
    model's files...; bulky values enter as digests). Equal keys mean equal pretraining,
    so cells share the weights."""
    return {"v": CODE_VERSION, "seed": seed, "general": sequences_digest(data.general),
            # a pinned text model's sha256 (pin_text_model) is `extra`'s model digest already
            "cfg": {k: v for k, v in cfg.items()
                    if k not in fine_tuning and not k.endswith("_sha256")},
            **{k: digest(v) for k, v in extra.items()}}


def pin_text_model(config: dict[str, Any], key: str = "text_model") -> dict[str, Any]:
    """`config` with the sha256 of the text model it names (`<key>_sha256`; see
    bench.identity), for System.configure: the cell key then covers the model's files,
    not only its name or path (`--set UniSRec.text_model=DIR`). A model that cannot be
    found is left unpinned: the cell fails with what to do, the other rows run."""
    spec = config.get(key)
    if spec == "random":  # P5's from-scratch T5
        return config
    try:
        path = text_encoder.resolve_model_dir(spec)
    except RuntimeError:
        return config
    from bench.identity import model_sha256

    return {**config, f"{key}_sha256": model_sha256(path)}


def text_model_key(cfg: dict[str, Any]) -> str:
    """Content hash of the configured text model's files (for `pretrain_key`)."""
    return text_encoder.model_digest(str(text_encoder.resolve_model_dir(cfg["text_model"])))


class Workspace:
    """`workdir`, or a private temporary directory removed with this object; pretrained
    weights live in its artifact store (protocols.store), shared by the run's cells."""

    def __init__(self, workdir: str | None):
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="textbase-")
        self.root = Path(workdir) if workdir else Path(self._tmp.name)
        self.store = Store(self.root)

    def cached_state(self, method: str, key: Any,
                     build: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The state stored under (`method`, `key`), built and stored once if missing."""
        built: dict[str, dict[str, torch.Tensor]] = {}

        def write(out: Path) -> None:
            built["state"] = {k: v.detach().clone() for k, v in build().items()}
            torch.save(built["state"], out / "state.pt")

        path = self.store.ensure(method, key, write)
        if "state" in built:
            return built["state"]
        return torch.load(path / "state.pt", map_location="cpu", weights_only=True)


class ItemVocab:
    """Item id <-> row (1..n; row 0 is padding), in the titles' order."""

    def __init__(self, titles: dict[str, str]):
        if not titles:
            raise ValueError("no item titles: text-based baselines need data.titles")
        self.ids = list(titles)
        self.texts = [titles[i] for i in self.ids]
        self.row = {item: n + 1 for n, item in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids) + 1  # with padding

    def rows(self, items: Sequence[str]) -> list[int]:
        try:
            return [self.row[i] for i in items]
        except KeyError as e:
            raise ValueError(f"item {e.args[0]!r} has no title in the training data") from None

    def seen_mask(self, seqs: Sequence[UserSequence]) -> np.ndarray:
        """Boolean per row: the item occurs in `seqs` (never the padding row)."""
        mask = np.zeros(len(self), dtype=bool)
        for s in seqs:
            mask[self.rows(s.items)] = True
        return mask


def with_padding_row(vec: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """Item vectors (n, d) as a table indexed by vocabulary row: row 0 (padding) is zero."""
    return torch.cat([torch.zeros(1, vec.shape[1]), torch.from_numpy(vec)]).to(device)


def softmax_pool(vocab: ItemVocab, seqs: Sequence[UserSequence],
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the items seen in `seqs` (the fine-tuning softmax runs over these) and a
    map from vocabulary row to position in that pool (-1 for items outside it)."""
    pool = torch.nonzero(torch.from_numpy(vocab.seen_mask(seqs))).squeeze(1)
    remap = torch.full((len(vocab),), -1, dtype=torch.long)
    remap[pool] = torch.arange(len(pool))
    return pool.to(device), remap.to(device)


def freeze(*modules: nn.Module) -> None:
    """Stop gradients into `modules` (fine-tuning keeps the pretrained encoder)."""
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)


def on(device: torch.device, *arrays: np.ndarray) -> tuple[torch.Tensor, ...]:
    """numpy arrays as tensors on `device`."""
    return tuple(torch.from_numpy(a).to(device) for a in arrays)


def next_item_windows(seqs: Sequence[UserSequence], vocab: ItemVocab, max_len: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training windows for a causal encoder: (inputs (W, max_len), lengths, targets).

    Input position j of a window predicts the next item (targets[w, j]; 0 = no loss).
    Windows end at the sequence end and every max_len // 2 before it; a window owns
    (gives a loss to) only its newer half, except the oldest window which owns all, so
    each training target is used once with at least max_len // 2 items of context (when
    the sequence has them). Targets outside a few-shot `targets` list get no loss, but
    their items still serve as context."""
    stride = max(1, max_len // 2)
    inputs, targets = [], []
    for s in seqs:
        rows = vocab.rows(s.items)
        allowed = np.zeros(len(rows), dtype=bool)
        pos = [t for t in s.target_positions() if 1 <= t < len(rows)]
        allowed[pos] = True
        end = len(rows) - 1  # inputs are rows[0:end], input j predicts rows[j + 1]
        while end > 0:
            start = max(0, end - max_len)
            own_from = start if start == 0 else max(start, end - stride)
            x = rows[start:end]
            y = [rows[j + 1] if (j >= own_from and allowed[j + 1]) else 0
                 for j in range(start, end)]
            if any(y):
                inputs.append(x)
                targets.append(y)
            end = own_from
    x, lens = pad_right(inputs, max_len)
    y, _ = pad_right(targets, max_len)
    return x, lens, y


def request_rows(requests: Sequence[ScoreRequest], vocab: ItemVocab, max_len: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(history rows, lengths, candidate rows (N, n_candidates)) for scoring."""
    hist, lens = pad_right([vocab.rows(r.history) for r in requests], max_len)
    n_c = {len(r.candidates) for r in requests}
    if len(n_c) > 1:
        raise ValueError(f"requests have different numbers of candidates: {sorted(n_c)}")
    cand = np.asarray([vocab.rows(r.candidates) for r in requests], dtype=np.int64)
    return hist, lens, cand.reshape(len(requests), -1)


def batches(n: int, size: int, rng: np.random.Generator | None = None) -> Iterator[np.ndarray]:
    """Index batches over range(n), shuffled when rng is given."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for s in range(0, n, size):
        yield order[s:s + size]


class CausalEncoder(nn.Module):
    """SASRec-style: item vectors + learned positions -> LayerNorm -> dropout ->
    post-LN transformer blocks under a causal mask.

    Histories are right-padded, so with the causal mask a real position never attends
    to padding (and no attention row is fully masked)."""

    def __init__(self, dim: int, n_layers: int, n_heads: int, inner: int, dropout: float,
                 max_len: int):
        super().__init__()
        self.position = nn.Embedding(max_len, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, n_heads, inner, dropout, activation="gelu",
                                           batch_first=True)
        self.blocks = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """States at every position (B, L, dim) of right-padded inputs (B, L, dim)."""
        length = x.shape[1]
        x = x + self.position.weight[:length].unsqueeze(0)
        x = self.dropout(self.norm(x))
        mask = torch.triu(torch.ones(length, length, dtype=torch.bool, device=x.device),
                          diagonal=1)
        return self.blocks(x, mask=mask)


def last_state(h: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """State at each row's last real position (position 0 for an empty history)."""
    return h[torch.arange(len(h), device=h.device), (lens - 1).clamp_min(0)]


def cosine_scores(requests: Sequence[ScoreRequest], vocab: ItemVocab, max_len: int,
                  item_table: Callable[[], torch.Tensor],
                  states: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> np.ndarray:
    """Cosine between each history's last (normalized) state and its candidates' vectors.

    `item_table()` gives the item vectors by vocabulary row (row 0 padding);
    `states(hist, items)` the normalized states at every position of right-padded
    histories."""
    hist, lens, cand = request_rows(requests, vocab, max_len)
    out = np.zeros(cand.shape, dtype=np.float64)
    with torch.no_grad():
        items = item_table()
        dev = items.device
        unit = nn.functional.normalize(items, dim=-1)
        for idx in batches(len(requests), 512):
            seq = last_state(states(torch.from_numpy(hist[idx]).to(dev), items),
                             torch.from_numpy(lens[idx]).to(dev))
            c = unit[torch.from_numpy(cand[idx]).to(dev)]  # (b, n_candidates, d)
            out[idx] = torch.einsum("bd,bcd->bc", seq, c).double().cpu().numpy()
    return out


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def sample_queries(states: torch.Tensor, targets: torch.Tensor, n: int,
                   gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `n` random positions that have a target: (their states, their targets).
    Pretraining contrasts these against in-batch items instead of every position."""
    q = torch.nonzero(targets > 0)
    q = q[torch.randperm(len(q), generator=gen)[:n].to(q.device)]  # `gen` draws on the CPU
    return states[q[:, 0], q[:, 1]], targets[q[:, 0], q[:, 1]]


def masked_contrastive(query: torch.Tensor, keys: torch.Tensor, same: torch.Tensor,
                       temperature: float) -> torch.Tensor:
    """In-batch InfoNCE: query i's positive is keys i; other keys with the same target
    (`same`, diagonal excluded) are dropped from the negatives. Inputs are L2-normalized."""
    logits = query @ keys.T / temperature
    off_diag = same & ~torch.eye(len(same), dtype=torch.bool, device=same.device)
    logits = logits.masked_fill(off_diag, float("-inf"))
    return nn.functional.cross_entropy(logits, torch.arange(len(query), device=query.device))
