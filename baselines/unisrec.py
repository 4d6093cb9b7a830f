"""UniSRec (Hou et al., KDD 2022), reimplemented from the paper.

Items are frozen sentence vectors of their titles (MiniLM mean-pooled in the cpu profile,
BERT-base in the paper profile) passed through an MoE adaptor: 8 parametric-whitening
experts (x - b_k) W_k mixed by a softmax gate (noisy while training). A SASRec-style
causal transformer encodes the adapted history. Pretraining on the domain-general corpus
uses the sequence-item contrastive loss (in-batch negatives) plus lambda times the
sequence-sequence contrastive loss (item-drop or word-drop augmented views). Fine-tuning
is the paper's *inductive* variant: text only, no item-ID embedding, sequence encoder
frozen, adaptor tuned with softmax cross-entropy over the items seen in the target
training data. Score: cosine between the sequence vector and each candidate's adapted
text vector, so an item never seen in training is scored from its title alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baselines import text_encoder
from baselines._textseq import (
    CausalEncoder,
    ItemVocab,
    Workspace,
    batches,
    cosine_scores,
    freeze,
    last_state,
    masked_contrastive,
    next_item_windows,
    on,
    pin_text_model,
    pretrain_key,
    sample_queries,
    softmax_pool,
    text_model_key,
    with_padding_row,
)
from baselines.common import EarlyStopping, device_for
from bench.api import ScoreRequest, System, TrainData, Validation
from bench.seeding import seed_everything
from protocols.digest import digest


class MoEAdaptor(nn.Module):
    """Mixture of parametric-whitening experts with a (noisy) softmax gate."""

    def __init__(self, d_in: int, d_out: int, n_experts: int, dropout: float,
                 noisy: bool = True):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(n_experts, d_in))
        self.weight = nn.Parameter(torch.randn(n_experts, d_in, d_out) * 0.02)
        self.w_gate = nn.Parameter(torch.zeros(d_in, n_experts))
        self.w_noise = nn.Parameter(torch.zeros(d_in, n_experts))
        self.dropout = nn.Dropout(dropout)
        self.noisy = noisy

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Expert weights per input row; each row sums to one."""
        logits = x @ self.w_gate
        if self.noisy and self.training:
            std = F.softplus(x @ self.w_noise) + 1e-2
            logits = logits + torch.randn_like(logits) * std
        return torch.softmax(logits, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gates(x)  # (..., E)
        centered = self.dropout(x).unsqueeze(-2) - self.bias  # (..., E, d_in)
        experts = torch.einsum("...ed,edo->...eo", centered, self.weight)
        return (g.unsqueeze(-1) * experts).sum(-2)


class UniSRecNet(nn.Module):
    def __init__(self, text: torch.Tensor, cfg: dict[str, Any]):
        super().__init__()
        self.register_buffer("text", text, persistent=False)  # (n_items + 1, d_text)
        dim = cfg["hidden"]
        self.adaptor = MoEAdaptor(text.shape[1], dim, cfg["n_experts"], cfg["adaptor_dropout"])
        self.encoder = CausalEncoder(dim, cfg["layers"], cfg["heads"], cfg["inner"],
                                     cfg["dropout"], cfg["max_len"])

    def items(self, text: torch.Tensor | None = None) -> torch.Tensor:
        """Adapted vectors of every row of the text table (row 0 = padding, zeroed)."""
        out = self.adaptor(self.text if text is None else text)
        return torch.cat([torch.zeros_like(out[:1]), out[1:]])

    def states(self, hist: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Normalized sequence vectors at every position (B, L, d)."""
        return F.normalize(self.encoder(table[hist]), dim=-1)


def item_drop(hist: torch.Tensor, lens: torch.Tensor, ratio: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop each history item with prob `ratio` (keeping the first), re-packed left."""
    keep = (torch.rand(hist.shape, device=hist.device) >= ratio) & (hist > 0)
    keep[:, 0] = hist[:, 0] > 0
    out = torch.zeros_like(hist)
    new_lens = keep.sum(1)
    pos = torch.cumsum(keep, 1) - 1
    rows = torch.arange(len(hist), device=hist.device).unsqueeze(1).expand_as(hist)
    out[rows[keep], pos[keep]] = hist[keep]
    return out, torch.maximum(new_lens, (lens > 0).long())


def word_drop_texts(texts: Sequence[str], ratio: float, seed: int) -> list[str]:
    """A second text view per item with a seeded fraction of words removed."""
    rng = np.random.default_rng([seed, 7])
    out = []
    for t in texts:
        words = t.split()
        kept = [w for w in words if rng.random() >= ratio] or words[:1]
        out.append(" ".join(kept))
    return out


class UniSRec(System):
    name = "UniSRec"
    group = "Transferable"
    full_ranking = True  # scores every item cheaply (--negatives all)
    uses_gpu: ClassVar[bool] = True  # the text encoder and the model run on it
    profiles: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"text_model": "minilm", "hidden": 32, "layers": 1, "heads": 2, "inner": 64,
                  "dropout": 0.2, "max_len": 20, "n_experts": 8, "adaptor_dropout": 0.2,
                  "temperature": 0.07, "lambda": 1e-3, "item_drop": 0.2,
                  "item_drop_prob": 0.9, "batch_size": 64, "queries": 512, "lr": 1e-3,
                  "pretrain_epochs": 1, "epochs": 2, "patience": 2},
        "cpu": {"text_model": "minilm", "hidden": 64, "layers": 2, "heads": 2, "inner": 128,
                "dropout": 0.3, "max_len": 50, "n_experts": 8, "adaptor_dropout": 0.2,
                "temperature": 0.07, "lambda": 1e-3, "item_drop": 0.2, "item_drop_prob": 0.9,
                "batch_size": 64, "queries": 1024, "lr": 1e-3, "pretrain_epochs": 10, "epochs": 30,
                "patience": 6},
        # Hou et al.: BERT-base [768 -> 300], 2 layers x 2 heads, inner 256, dropout 0.5,
        # 8 experts, tau 0.07, lambda 1e-3, 300 pretraining epochs, early stop after 10.
        "paper": {"text_model": "bert-base-uncased", "text_pooling": "cls", "hidden": 300,
                  "layers": 2, "heads": 2, "inner": 256, "dropout": 0.5, "max_len": 50,
                  "n_experts": 8, "adaptor_dropout": 0.2, "temperature": 0.07, "lambda": 1e-3,
                  "item_drop": 0.2, "item_drop_prob": 0.9, "batch_size": 256, "queries": 4096,
                  "lr": 1e-3, "pretrain_epochs": 300, "epochs": 300, "patience": 10},
    }

    @classmethod
    def configure(cls, config: dict[str, Any], backbone: str | None = None,
                  backbone_label: str | None = None) -> dict[str, Any]:
        """The text model pinned by the sha256 of its files (in the cell key)."""
        return pin_text_model(config)

    def __init__(self, config: dict[str, Any], seed: int, workdir: str | None = None):
        super().__init__(config, seed, workdir)
        self.ws = Workspace(workdir)
        self.net: UniSRecNet | None = None
        self.vocab: ItemVocab | None = None
        self.device = device_for(self.config)
        self.info: dict[str, Any] = {"fine_tuning": "inductive (text only, encoder frozen)",
                                     "device": self.device.type}

    def _net(self, text: torch.Tensor) -> UniSRecNet:
        """A new network on this system's device."""
        return UniSRecNet(text.to(self.device), self.config).to(self.device)

    # -- training -----------------------------------------------------------------
    def fit(self, data: TrainData, valid: Validation) -> None:
        cfg = self.config
        seed_everything(self.seed)
        self.vocab = ItemVocab(data.titles)
        vec = text_encoder.text_vectors(self.vocab.texts, cfg["text_model"], self.ws.root,
                                          pooling=cfg.get("text_pooling", "mean"),
                                          device=self.device)
        text = with_padding_row(vec, self.device)
        self.net = self._net(text)
        if data.general and cfg["pretrain_epochs"] > 0:
            key = pretrain_key(cfg, ("epochs", "patience"), self.seed, data,
                               texts=self.vocab.texts, model=text_model_key(cfg))
            state = self.ws.cached_state("unisrec", key, lambda: self._pretrain(data, text))
            self.net.load_state_dict(state)
            self.info["pretrained"] = digest(key)[:12]
        seed_everything(self.seed + 1)  # same stream whether or not pretraining ran here
        self._finetune(data, valid)

    def _pretrain(self, data: TrainData, text: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg, net = self.config, self.net
        texts_aug = word_drop_texts(self.vocab.texts, cfg["item_drop"], self.seed)
        vec_aug = text_encoder.text_vectors(texts_aug, cfg["text_model"], self.ws.root,
                                              pooling=cfg.get("text_pooling", "mean"),
                                              device=self.device)
        text_aug = with_padding_row(vec_aug, self.device)
        hist, lens, tgt = on(self.device,
                             *next_item_windows(data.general, self.vocab, cfg["max_len"]))
        opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
        rng = np.random.default_rng([self.seed, 1])
        gen = torch.Generator().manual_seed(self.seed)
        tau = cfg["temperature"]
        net.train()
        for _ in range(cfg["pretrain_epochs"]):
            for idx in batches(len(tgt), cfg["batch_size"], rng):
                h, ln, y = hist[idx], lens[idx], tgt[idx]
                table = net.items()
                states = net.states(h, table)
                # sequence-item: a random subset of the positions with a target
                seq, yq = sample_queries(states, y, cfg["queries"], gen)
                same = yq.unsqueeze(0) == yq.unsqueeze(1)
                loss = masked_contrastive(seq, F.normalize(table[yq], dim=-1), same, tau)
                # sequence-sequence: each window's last state vs an augmented view
                last = last_state(states, ln)
                if rng.random() < cfg["item_drop_prob"]:
                    h2, l2 = item_drop(h, ln, cfg["item_drop"])
                    aug = last_state(net.states(h2, table), l2)
                else:  # word drop: a random 20% of the items use the word-dropped text
                    table_aug = net.items(text_aug)
                    swap = (torch.rand(h.shape, device=h.device) < cfg["item_drop"]
                            ).unsqueeze(-1)
                    x = torch.where(swap, table_aug[h], table[h])
                    aug = last_state(F.normalize(net.encoder(x), dim=-1), ln)
                y_last = y[torch.arange(len(y), device=y.device), (ln - 1).clamp_min(0)]
                same_last = y_last.unsqueeze(0) == y_last.unsqueeze(1)
                loss = loss + cfg["lambda"] * masked_contrastive(last, aug, same_last, tau)
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()
        return net.state_dict()

    def _finetune(self, data: TrainData, valid: Validation) -> None:
        cfg, net = self.config, self.net
        hist, _, tgt = on(self.device, *next_item_windows(data.train, self.vocab, cfg["max_len"]))
        pool, remap = softmax_pool(self.vocab, data.train, self.device)
        freeze(net.encoder.position, net.encoder.blocks)
        opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=cfg["lr"])
        rng = np.random.default_rng([self.seed, 2])
        best = EarlyStopping(cfg["patience"])
        for epoch in range(cfg["epochs"]):
            net.train()
            for idx in batches(len(tgt), cfg["batch_size"], rng):
                table = net.items()
                states = net.states(hist[idx], table)
                y = tgt[idx]
                has = y > 0
                logits = states[has] @ F.normalize(table[pool], dim=-1).T / cfg["temperature"]
                loss = F.cross_entropy(logits, remap[y[has]])
                opt.zero_grad()
                loss.backward()
                opt.step()
            net.eval()
            if not valid.requests:
                continue
            if best.update(valid.evaluate(self.score), epoch, net):
                break
        best.restore(net)
        net.eval()
        self.info.update(best_epoch=best.best_epoch, valid_ndcg1=best.history)

    # -- scoring ------------------------------------------------------------------
    def score(self, requests: Sequence[ScoreRequest]) -> np.ndarray:
        if self.net is None:
            raise RuntimeError("UniSRec.score called before fit")
        return cosine_scores(requests, self.vocab, self.config["max_len"], self.net.items,
                             self.net.states)

    def describe(self) -> dict[str, Any]:
        return dict(self.info)
