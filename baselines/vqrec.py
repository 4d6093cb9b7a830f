"""VQ-Rec (Hou et al., WWW 2023), reimplemented from the paper.

Text -> code -> representation: each item's frozen sentence vector (MiniLM in the cpu
profile, BERT-base in the paper profile) is turned into discrete codes by optimized
product quantization (faiss OPQ + PQ, seeded, trained only on the items of the corpus
being trained on); an item's vector is the mean of its code embeddings, and a SASRec-style
causal transformer encodes the history. Pretraining on the domain-general corpus uses an
in-batch contrastive loss plus semi-synthetic negatives (the positive's codes with a
fraction replaced by random codes). Fine-tuning on the target domain quantizes its
training items with a fresh index and first learns, per sub-quantizer, a permutation
that re-assigns the pretrained code embeddings to the new codes (Gumbel-Sinkhorn relaxed,
hardened with the Hungarian algorithm); then the code embeddings are tuned with the
encoder frozen. Candidates unseen in training get codes from their text, so cold items are
scored like any other. Score: cosine between sequence and candidate vectors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from baselines import text_encoder
from baselines._textseq import (
    CausalEncoder,
    ItemVocab,
    Workspace,
    batches,
    cosine_scores,
    freeze,
    next_item_windows,
    on,
    pin_text_model,
    pretrain_key,
    sample_queries,
    softmax_pool,
    text_model_key,
)
from baselines.common import EarlyStopping, device_for
from bench.api import ScoreRequest, System, TrainData, Validation
from bench.seeding import seed_everything
from protocols.digest import digest


def effective_bits(n_train: int, bits: int, min_points: int = 4) -> int:
    """Bits per sub-quantizer, lowered so that k-means has >= min_points per centroid."""
    if n_train < 2:
        raise ValueError(f"product quantization needs at least 2 training items, got {n_train}")
    return max(1, min(bits, int(math.floor(math.log2(max(2, n_train // min_points))))))


def opq_applies(n_train: int, dim: int, want: bool) -> bool:
    """OPQ's rotation needs at least `dim` training vectors (faiss crashes below that)."""
    return want and n_train >= dim


def fit_pq(vectors: np.ndarray, train_rows: np.ndarray, n_sub: int, bits: int, seed: int,
           opq: bool = True, opq_iters: int = 50) -> tuple[np.ndarray, int]:
    """Codes (n, n_sub) in [0, 2**b) for every row of `vectors`, from an (O)PQ index whose
    rotation and centroids are fit on `train_rows` only. Returns (codes, b). With fewer
    training items than dimensions the rotation is skipped (plain PQ)."""
    import faiss

    d = vectors.shape[1]
    if d % n_sub:
        raise ValueError(f"text dimension {d} is not divisible by {n_sub} sub-quantizers")
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    xt = np.ascontiguousarray(x[np.asarray(train_rows)])
    b = effective_bits(len(xt), bits)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # one k-means thread: identical codes for a seed
    try:
        def make_pq() -> Any:
            pq = faiss.ProductQuantizer(d, n_sub, b)
            pq.cp.seed = int(seed) % (2**31)
            pq.cp.min_points_per_centroid = 1
            return pq

        if opq_applies(len(xt), d, opq):
            rot = faiss.OPQMatrix(d, n_sub)
            rot.niter = opq_iters
            rot.pq = make_pq()
            rot.train(xt)
            x, xt = rot.apply_py(x), rot.apply_py(xt)
        pq = make_pq()
        pq.train(xt)
        cent = faiss.vector_to_array(pq.centroids).reshape(n_sub, 2**b, d // n_sub)
    finally:
        faiss.omp_set_num_threads(threads)
    sub = x.reshape(len(x), n_sub, d // n_sub)
    dist = ((sub[:, :, None, :] - cent[None]) ** 2).sum(-1)  # (n, n_sub, k)
    return dist.argmin(-1).astype(np.int64), b


def sinkhorn(log_p: torch.Tensor, iters: int) -> torch.Tensor:
    """Doubly-stochastic matrices from (..., k, k) log-scores by alternating normalization."""
    for _ in range(iters):
        log_p = log_p - torch.logsumexp(log_p, dim=-1, keepdim=True)
        log_p = log_p - torch.logsumexp(log_p, dim=-2, keepdim=True)
    return log_p.exp()


class VQRecNet(nn.Module):
    def __init__(self, n_sub: int, n_codes: int, cfg: dict[str, Any]):
        super().__init__()
        self.n_sub, self.n_codes = n_sub, n_codes
        self.code_emb = nn.Parameter(torch.randn(n_sub, n_codes, cfg["hidden"]) * 0.02)
        self.encoder = CausalEncoder(cfg["hidden"], cfg["layers"], cfg["heads"], cfg["inner"],
                                     cfg["dropout"], cfg["max_len"])
        self.register_buffer("codes", torch.zeros(1, n_sub, dtype=torch.long), persistent=False)

    def set_codes(self, codes: np.ndarray) -> None:
        """Codes of item rows 1..n (row 0, padding, gets a zero vector)."""
        self.codes = torch.cat([torch.zeros(1, self.n_sub, dtype=torch.long),
                                torch.from_numpy(codes)]).to(self.code_emb.device)

    def embed(self, codes: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of the code embeddings: (..., n_sub) codes -> (..., hidden)."""
        table = self.code_emb if table is None else table
        return table[torch.arange(self.n_sub, device=codes.device), codes].mean(-2)

    def items(self, table: torch.Tensor | None = None) -> torch.Tensor:
        out = self.embed(self.codes, table)
        return torch.cat([torch.zeros_like(out[:1]), out[1:]])

    def states(self, hist: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder(items[hist]), dim=-1)


class VQRec(System):
    name = "VQ-Rec"
    group = "Transferable"
    full_ranking = True  # scores every item cheaply (--negatives all)
    uses_gpu: ClassVar[bool] = True  # the text encoder and the model run on it
    profiles: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"text_model": "minilm", "n_sub": 32, "bits": 6, "opq": True, "opq_iters": 2,
                  "hidden": 32,
                  "layers": 1, "heads": 2, "inner": 64, "dropout": 0.2, "max_len": 20,
                  "temperature": 0.07, "fake_ratio": 0.75, "batch_size": 64, "queries": 512,
                  "lr": 1e-3, "pretrain_epochs": 1, "perm_epochs": 1, "sinkhorn_iters": 3,
                  "gumbel_tau": 0.7, "epochs": 2, "patience": 2},
        "cpu": {"text_model": "minilm", "n_sub": 32, "bits": 8, "opq": True, "opq_iters": 8,
                "hidden": 64,
                "layers": 2, "heads": 2, "inner": 128, "dropout": 0.3, "max_len": 50,
                "temperature": 0.07, "fake_ratio": 0.75, "batch_size": 64, "queries": 1024,
                "lr": 1e-3, "pretrain_epochs": 10, "perm_epochs": 3, "sinkhorn_iters": 3,
                "gumbel_tau": 0.7, "epochs": 30, "patience": 6},
        # Hou et al.: BERT-base, OPQ32 x 8 bits, hidden 300, 2 layers x 2 heads, inner 256,
        # dropout 0.5, tau 0.07, fake-code ratio 0.75, 3 Sinkhorn iterations, 5 epochs of
        # index re-assignment before tuning, early stop after 10.
        "paper": {"text_model": "bert-base-uncased", "text_pooling": "cls", "n_sub": 32,
                  "opq_iters": 50,
                  "bits": 8, "opq": True,
                  "hidden": 300, "layers": 2, "heads": 2, "inner": 256, "dropout": 0.5,
                  "max_len": 50, "temperature": 0.07, "fake_ratio": 0.75, "batch_size": 256,
                  "queries": 4096, "lr": 1e-3, "pretrain_epochs": 300, "perm_epochs": 5,
                  "sinkhorn_iters": 3, "gumbel_tau": 0.7, "epochs": 300, "patience": 10},
    }

    @classmethod
    def configure(cls, config: dict[str, Any], backbone: str | None = None,
                  backbone_label: str | None = None) -> dict[str, Any]:
        """The text model pinned by the sha256 of its files (in the cell key)."""
        return pin_text_model(config)

    def __init__(self, config: dict[str, Any], seed: int, workdir: str | None = None):
        super().__init__(config, seed, workdir)
        self.ws = Workspace(workdir)
        self.net: VQRecNet | None = None
        self.vocab: ItemVocab | None = None
        self.device = device_for(self.config)
        self.info: dict[str, Any] = {"device": self.device.type}

    def _net(self) -> VQRecNet:
        """A new network on this system's device."""
        cfg = self.config
        return VQRecNet(cfg["n_sub"], 2 ** cfg["bits"], cfg).to(self.device)

    def _codes(self, vec: np.ndarray, seqs: Sequence, seed_stream: int) -> tuple[np.ndarray, int]:
        rows = np.flatnonzero(self.vocab.seen_mask(seqs)[1:])  # item rows seen in `seqs`
        return fit_pq(vec, rows, self.config["n_sub"], self.config["bits"],
                      self.seed * 1000 + seed_stream, self.config["opq"],
                      self.config.get("opq_iters", 50))

    def fit(self, data: TrainData, valid: Validation) -> None:
        cfg = self.config
        seed_everything(self.seed)
        self.vocab = ItemVocab(data.titles)
        vec = text_encoder.text_vectors(self.vocab.texts, cfg["text_model"], self.ws.root,
                                          pooling=cfg.get("text_pooling", "mean"),
                                          device=self.device)
        target_codes, b = self._codes(vec, data.train, 2)
        self.net = self._net()
        pretrained = bool(data.general) and cfg["pretrain_epochs"] > 0
        if pretrained:
            key = pretrain_key(cfg, ("epochs", "patience", "perm_epochs"), self.seed, data,
                               texts=self.vocab.texts, model=text_model_key(cfg))
            state = self.ws.cached_state("vqrec", key, lambda: self._pretrain(data, vec))
            self.net.load_state_dict(state)
            self.info["pretrained"] = digest(key)[:12]
        self.net.set_codes(target_codes)
        n_pq = int(self.vocab.seen_mask(data.train).sum())
        self.info.update(bits=b, target_pq_items=n_pq,
                         opq=opq_applies(n_pq, vec.shape[1], cfg["opq"]))
        seed_everything(self.seed + 1)  # same stream whether or not pretraining ran here
        self._finetune(data, valid, permute=pretrained)

    def _pretrain(self, data: TrainData, vec: np.ndarray) -> dict[str, torch.Tensor]:
        cfg, net = self.config, self.net
        codes, b = self._codes(vec, data.general, 1)
        net.set_codes(codes)
        hist, lens, tgt = on(self.device,
                             *next_item_windows(data.general, self.vocab, cfg["max_len"]))
        opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
        rng = np.random.default_rng([self.seed, 1])
        gen = torch.Generator().manual_seed(self.seed)
        tau = cfg["temperature"]
        net.train()
        for _ in range(cfg["pretrain_epochs"]):
            for idx in batches(len(tgt), cfg["batch_size"], rng):
                h, y = hist[idx], tgt[idx]
                items = net.items()
                states = net.states(h, items)
                seq, yq = sample_queries(states, y, cfg["queries"], gen)
                pos = F.normalize(items[yq], dim=-1)
                # semi-synthetic negative: the positive's codes, a fraction made random
                c = net.codes[yq]
                # drawn on the CPU's generator, then moved: the same draws on any device
                swap = (torch.rand(c.shape, generator=gen) < cfg["fake_ratio"]).to(c.device)
                rand = torch.randint(0, 2 ** b, c.shape, generator=gen).to(c.device)
                fake = F.normalize(net.embed(torch.where(swap, rand, c)), dim=-1)
                logits = seq @ pos.T / tau
                same = (yq.unsqueeze(0) == yq.unsqueeze(1)) & ~torch.eye(
                    len(yq), dtype=torch.bool, device=yq.device)
                logits = logits.masked_fill(same, float("-inf"))
                fake_logit = (seq * fake).sum(-1, keepdim=True) / tau
                loss = F.cross_entropy(torch.cat([logits, fake_logit], 1),
                                       torch.arange(len(yq), device=yq.device))
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()
        return {k: v for k, v in net.state_dict().items()}

    def _finetune(self, data: TrainData, valid: Validation, permute: bool) -> None:
        cfg, net = self.config, self.net
        hist, _, tgt = on(self.device, *next_item_windows(data.train, self.vocab, cfg["max_len"]))
        pool, remap = softmax_pool(self.vocab, data.train, self.device)
        freeze(net.encoder.position, net.encoder.blocks)
        rng = np.random.default_rng([self.seed, 2])
        gen = torch.Generator().manual_seed(self.seed + 1)
        best = EarlyStopping(cfg["patience"])
        k = net.code_emb.shape[1]
        logit_p = nn.Parameter(torch.randn(net.n_sub, k, k, generator=gen).to(self.device))

        def table(train: bool) -> torch.Tensor | None:
            if logit_p is None:
                return None
            if train:  # Gumbel-Sinkhorn relaxation of a permutation per sub-quantizer
                u = torch.rand(logit_p.shape, generator=gen).to(logit_p.device).clamp(
                    1e-6, 1 - 1e-6)
                noisy = (logit_p - torch.log(-torch.log(u))) / cfg["gumbel_tau"]
                perm = sinkhorn(noisy, cfg["sinkhorn_iters"])
            else:
                perm = sinkhorn(logit_p / cfg["gumbel_tau"], cfg["sinkhorn_iters"])
            return torch.bmm(perm, net.code_emb)

        def run_epoch(opt: torch.optim.Optimizer) -> None:
            net.train()
            for idx in batches(len(tgt), cfg["batch_size"], rng):
                items = net.items(table(True))
                states = net.states(hist[idx], items)
                y = tgt[idx]
                has = y > 0
                logits = states[has] @ F.normalize(items[pool], dim=-1).T / cfg["temperature"]
                loss = F.cross_entropy(logits, remap[y[has]])
                opt.zero_grad()
                loss.backward()
                opt.step()
            net.eval()

        epoch = 0
        if permute and cfg["perm_epochs"] > 0:
            frozen = [p for p in net.parameters() if p.requires_grad]
            for p in frozen:
                p.requires_grad_(False)
            opt = torch.optim.Adam([logit_p], lr=cfg["lr"] * 10)
            for _ in range(cfg["perm_epochs"]):
                run_epoch(opt)
                epoch += 1
            with torch.no_grad():  # harden: the permutation closest to the relaxed one
                soft = sinkhorn(logit_p / cfg["gumbel_tau"], cfg["sinkhorn_iters"]).cpu().numpy()
                emb = net.code_emb.detach().clone()
                for m in range(net.n_sub):
                    rows, cols = linear_sum_assignment(-soft[m])
                    emb[m, rows] = net.code_emb[m, cols]
                net.code_emb.copy_(emb)
            for p in frozen:
                p.requires_grad_(True)
        logit_p = None
        opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=cfg["lr"])
        for e in range(cfg["epochs"]):
            run_epoch(opt)
            if valid.requests and best.update(valid.evaluate(self.score), epoch + e, net):
                break
        best.restore(net)
        net.eval()
        self.info.update(permutation_epochs=epoch, best_epoch=best.best_epoch,
                         valid_ndcg1=best.history)

    def score(self, requests: Sequence[ScoreRequest]) -> np.ndarray:
        if self.net is None:
            raise RuntimeError("VQ-Rec.score called before fit")
        return cosine_scores(requests, self.vocab, self.config["max_len"], self.net.items,
                             self.net.states)

    def describe(self) -> dict[str, Any]:
        return dict(self.info)
