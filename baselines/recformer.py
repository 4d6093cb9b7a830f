"""RecFormer (Li et al., KDD 2023), reimplemented from the paper.

An item is flattened to "key value" text ("title <title>", plus any other attributes a
dataset provides). A user is the concatenation [CLS] item_n item_{n-1} ... (most recent
first), and one bidirectional text encoder reads it with, besides the usual token and
position embeddings, a token-type embedding (CLS / key / value) and an item-position
embedding (which item of the sequence a token belongs to). The same encoder encodes a
single item as the one-item sequence [CLS] item, so sequence and item vectors share one
space. Pretraining on the domain-general corpus: sequence-item contrastive loss
(in-batch negatives, next item as positive) plus lambda x masked-language-model loss.
Fine-tuning in two stages: (1) each epoch re-encode all items into a matrix I and train
the encoder against I (softmax over the items seen in target training); (2) freeze I from
the best stage-1 model and keep training the encoder. Score: cosine between the sequence
encoding and each candidate's row of I (cold items are encoded from their text).

The cpu profile stands MiniLM in for Longformer and keeps only its first `n_layers`
transformer layers (all trained) with short sequences, mean pooling (how MiniLM was
trained) and a few hundred samples per epoch; the paper profile is Longformer-base, CLS
pooling and the full settings.
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
    ItemVocab,
    Workspace,
    batches,
    pin_text_model,
    pretrain_key,
    softmax_pool,
    text_model_key,
)
from baselines.common import EarlyStopping, device_for
from bench.api import ScoreRequest, System, TrainData, UserSequence, Validation
from bench.seeding import seed_everything
from protocols.digest import digest

CLS_TYPE, KEY_TYPE, VALUE_TYPE = 0, 1, 2


def item_fields(title: str) -> list[tuple[str, str]]:
    """(key, value) attributes of an item; the protocol files carry titles only."""
    return [("title", title)]


class RecFormerNet(nn.Module):
    """A pretrained text encoder plus RecFormer's token-type, item-position and MLM parts."""

    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        tok, enc = text_encoder.load_model(text_encoder.resolve_model_dir(cfg["text_model"]))
        if cfg.get("n_layers") and cfg["n_layers"] < len(enc.encoder.layer):
            enc.encoder.layer = enc.encoder.layer[:cfg["n_layers"]]
            enc.config.num_hidden_layers = cfg["n_layers"]
        self.tok, self.enc, self.cfg = tok, enc, cfg
        dim = enc.config.hidden_size
        old = enc.embeddings.token_type_embeddings.weight.data
        types = nn.Embedding(3, dim)  # CLS, key, value (initialized from the checkpoint's)
        types.weight.data.copy_(old[[0, 0, min(1, len(old) - 1)]])
        enc.embeddings.token_type_embeddings = types
        enc.config.type_vocab_size = 3
        self.item_pos = nn.Embedding(cfg["max_items"] + 1, dim)
        nn.init.zeros_(self.item_pos.weight)  # starts as the plain checkpoint
        self.mlm = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim, eps=1e-12))
        self.mlm_bias = nn.Parameter(torch.zeros(enc.config.vocab_size))
        self.register_buffer("item_matrix", torch.zeros(0, dim))  # I, unit rows
        if cfg.get("train_layers"):  # cpu budget: only the top layers (and the new
            # token-type / item-position embeddings) learn; gradients still reach the input
            frozen = [enc.embeddings.word_embeddings, enc.embeddings.position_embeddings,
                      enc.embeddings.LayerNorm, *enc.encoder.layer[:-cfg["train_layers"]]]
            for module in frozen:
                for p in module.parameters():
                    p.requires_grad_(False)
        self.item_tokens: list[tuple[list[int], list[int]]] = []

    @property
    def device(self) -> torch.device:
        return self.item_pos.weight.device

    def tokenize_items(self, texts: Sequence[str]) -> None:
        """Token ids and types of every item's "key value ..." text (row 0 = padding)."""
        budget = self.cfg["max_item_tokens"]
        self.item_tokens = [([], [])]
        for title in texts:
            ids: list[int] = []
            types: list[int] = []
            for key, value in item_fields(title):
                k = self.tok(key, add_special_tokens=False)["input_ids"]
                v = self.tok(value, add_special_tokens=False)["input_ids"]
                ids += k + v
                types += [KEY_TYPE] * len(k) + [VALUE_TYPE] * len(v)
            self.item_tokens.append((ids[:budget], types[:budget]))

    def collate(self, seqs: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Batch of item-row sequences, each most recent first, as encoder inputs."""
        cls = self.tok.cls_token_id if self.tok.cls_token_id is not None else \
            self.tok.bos_token_id
        rows = []
        for seq in seqs:
            ids, types, pos = [cls], [CLS_TYPE], [0]
            for k, item in enumerate(list(seq)[:self.cfg["max_items"]], start=1):
                t_ids, t_types = self.item_tokens[item]
                if len(ids) + len(t_ids) > self.cfg["max_tokens"]:
                    break
                ids += t_ids
                types += t_types
                pos += [k] * len(t_ids)
            rows.append((ids, types, pos))
        length = max(len(r[0]) for r in rows)
        out = {k: torch.zeros(len(rows), length, dtype=torch.long)
               for k in ("input_ids", "types", "item_pos", "mask")}
        out["input_ids"].fill_(self.tok.pad_token_id)
        for n, (ids, types, pos) in enumerate(rows):
            out["input_ids"][n, :len(ids)] = torch.tensor(ids)
            out["types"][n, :len(ids)] = torch.tensor(types)
            out["item_pos"][n, :len(ids)] = torch.tensor(pos)
            out["mask"][n, :len(ids)] = 1
        return {k: v.to(self.device) for k, v in out.items()}

    def hidden(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        words = self.enc.get_input_embeddings()(batch["input_ids"])
        kwargs = {}
        if self.enc.config.model_type == "longformer":  # global attention on CLS
            kwargs["global_attention_mask"] = torch.zeros_like(batch["mask"])
            kwargs["global_attention_mask"][:, 0] = 1
        return self.enc(inputs_embeds=words + self.item_pos(batch["item_pos"]),
                        attention_mask=batch["mask"], token_type_ids=batch["types"],
                        **kwargs).last_hidden_state

    def pool(self, h: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Unit vectors: the CLS state, or the mean over the real tokens."""
        v = h[:, 0] if self.cfg["pooling"] == "cls" else text_encoder.mean_pool(h, batch["mask"])
        return F.normalize(v, dim=-1)

    def encode(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        """Unit vectors of item-row sequences (most recent first); an item is [item]."""
        batch = self.collate(seqs)
        return self.pool(self.hidden(batch), batch)

    def mlm_loss(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> torch.Tensor:
        """BERT-style masked-token loss on the non-CLS tokens of a batch."""
        ids = batch["input_ids"].clone()
        cand = (batch["mask"] == 1) & (batch["types"] != CLS_TYPE)
        # drawn on the CPU's generator, then moved: the same draws on any device
        pick = cand & (torch.rand(ids.shape, generator=gen) < self.cfg["mlm_prob"]
                       ).to(ids.device)
        if not pick.any():
            return torch.zeros((), device=ids.device)
        r = torch.rand(ids.shape, generator=gen).to(ids.device)
        vocab = self.enc.config.vocab_size
        ids[pick & (r < 0.8)] = self.tok.mask_token_id
        rand_tok = torch.randint(0, vocab, ids.shape, generator=gen).to(ids.device)
        swap = pick & (r >= 0.8) & (r < 0.9)
        ids[swap] = rand_tok[swap]
        h = self.hidden({**batch, "input_ids": ids})[pick]
        logits = self.mlm(h) @ self.enc.get_input_embeddings().weight.T + self.mlm_bias
        return F.cross_entropy(logits, batch["input_ids"][pick])

    @torch.no_grad()
    def encode_all(self, n_rows: int, batch: int = 128) -> torch.Tensor:
        """I: unit vectors of item rows 1..n_rows - 1 (row 0 = zeros)."""
        was = self.training
        self.eval()
        out = [torch.zeros(1, self.enc.config.hidden_size, device=self.device)]
        for s in range(1, n_rows, batch):
            out.append(self.encode([[r] for r in range(s, min(n_rows, s + batch))]))
        self.train(was)
        return torch.cat(out)


def sample_pairs(seqs: Sequence[UserSequence], vocab: ItemVocab, per_user: int,
                 max_items: int, rng: np.random.Generator
                 ) -> tuple[list[list[int]], np.ndarray]:
    """Up to `per_user` (history most recent first, next item) samples per sequence,
    drawn among all its positions as in the full setting; of a few-shot share, only the
    positions it kept (p% of the full setting's samples, nested)."""
    hists, targets = [], []
    for s in seqs:
        rows = vocab.rows(s.items)
        pos = list(range(1, len(rows)))
        if not pos:
            continue
        share = None if s.targets is None else set(s.targets)
        pick = rng.choice(pos, size=min(per_user, len(pos)), replace=False)
        for t in sorted(pick.tolist()):
            if share is not None and t not in share:
                continue
            hists.append(rows[max(0, t - max_items):t][::-1])
            targets.append(rows[t])
    return hists, np.asarray(targets, dtype=np.int64)


class RecFormer(System):
    name = "RecFormer"
    group = "LLM-Based"
    full_ranking = True  # scores every item cheaply (--negatives all)
    uses_gpu: ClassVar[bool] = True  # the text model is trained on it
    profiles: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"text_model": "minilm", "n_layers": 1, "pooling": "mean", "max_items": 4,
                  "max_item_tokens": 12, "max_tokens": 48, "temperature": 0.05,
                  "mlm_weight": 0.1, "mlm_prob": 0.15, "batch_size": 16, "lr": 5e-5,
                  "pretrain_per_user": 1, "pretrain_epochs": 1, "per_user": 1,
                  "stage1_epochs": 1, "stage2_epochs": 1, "patience": 1},
        "cpu": {"text_model": "minilm", "n_layers": 2, "pooling": "mean", "max_items": 6,
                "max_item_tokens": 12, "max_tokens": 64, "temperature": 0.05,
                "mlm_weight": 0.1, "mlm_prob": 0.15, "batch_size": 16, "lr": 5e-5,
                "pretrain_per_user": 2, "pretrain_epochs": 1, "per_user": 2,
                "stage1_epochs": 3, "stage2_epochs": 2, "patience": 2},
        # Li et al.: Longformer-base (attention window 64), 50 items, 32 tokens per
        # attribute, 1024 tokens, tau 0.05, MLM weight 0.1, lr 5e-5, 16 epochs per stage,
        # patience 5 (stage 1) and 3 (stage 2), every training target used each epoch.
        "paper": {"text_model": "allenai/longformer-base-4096", "n_layers": None,
                  "pooling": "cls", "max_items": 50, "max_item_tokens": 96,
                  "max_tokens": 1024, "temperature": 0.05, "mlm_weight": 0.1,
                  "mlm_prob": 0.15, "batch_size": 16, "lr": 5e-5, "pretrain_per_user": 1000000,
                  "pretrain_epochs": 4, "per_user": 1000000, "stage1_epochs": 16,
                  "stage2_epochs": 16, "patience": 5},
    }

    @classmethod
    def configure(cls, config: dict[str, Any], backbone: str | None = None,
                  backbone_label: str | None = None) -> dict[str, Any]:
        """The text model pinned by the sha256 of its files (in the cell key)."""
        return pin_text_model(config)

    def __init__(self, config: dict[str, Any], seed: int, workdir: str | None = None):
        super().__init__(config, seed, workdir)
        self.ws = Workspace(workdir)
        self.net: RecFormerNet | None = None
        self.vocab: ItemVocab | None = None
        self.device = device_for(self.config)
        self.info: dict[str, Any] = {"device": self.device.type}

    def _net(self) -> RecFormerNet:
        """A new network (the text model loaded) on this system's device."""
        return RecFormerNet(self.config).to(self.device)

    def fit(self, data: TrainData, valid: Validation) -> None:
        cfg = self.config
        seed_everything(self.seed)
        self.vocab = ItemVocab(data.titles)
        self.net = self._net()
        self.net.tokenize_items(self.vocab.texts)
        if data.general and cfg["pretrain_epochs"] > 0:
            fine_tuning = ("per_user", "stage1_epochs", "stage2_epochs", "patience")
            key = pretrain_key(cfg, fine_tuning, self.seed, data, texts=self.vocab.texts,
                               model=text_model_key(cfg))
            state = self.ws.cached_state("recformer", key, lambda: self._pretrain(data))
            self.net.load_state_dict(state)
            self.info["pretrained"] = digest(key)[:12]
        seed_everything(self.seed + 1)  # same stream whether or not pretraining ran here
        self._finetune(data, valid)

    def _pretrain(self, data: TrainData) -> dict[str, torch.Tensor]:
        cfg, net = self.config, self.net
        rng = np.random.default_rng([self.seed, 1])
        gen = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad],
                                lr=cfg["lr"] * 4)
        net.train()
        for _ in range(cfg["pretrain_epochs"]):
            hists, tgt = sample_pairs(data.general, self.vocab, cfg["pretrain_per_user"],
                                      cfg["max_items"], rng)
            for idx in batches(len(tgt), cfg["batch_size"], rng):
                y = torch.from_numpy(tgt[idx])
                batch = net.collate([hists[i] for i in idx])
                seq = net.pool(net.hidden(batch), batch)
                items = net.encode([[int(t)] for t in y])  # the same encoder
                logits = seq @ items.T / cfg["temperature"]
                y = y.to(self.device)
                same = (y.unsqueeze(0) == y.unsqueeze(1)) & ~torch.eye(
                    len(y), dtype=torch.bool, device=y.device)
                loss = F.cross_entropy(logits.masked_fill(same, float("-inf")),
                                       torch.arange(len(y), device=y.device))
                loss = loss + cfg["mlm_weight"] * net.mlm_loss(batch, gen)
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()
        return net.state_dict()

    def _finetune(self, data: TrainData, valid: Validation) -> None:
        cfg, net = self.config, self.net
        pool, remap = softmax_pool(self.vocab, data.train, self.device)
        rng = np.random.default_rng([self.seed, 2])
        params = [p for n, p in net.named_parameters()
                  if not n.startswith("mlm") and p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg["lr"])
        best = EarlyStopping(cfg["patience"])
        n_rows = len(self.vocab)
        epoch = 0
        for stage, epochs in ((1, cfg["stage1_epochs"]), (2, cfg["stage2_epochs"])):
            best.bad = 0
            if stage == 2:
                best.restore(net)  # continue from the best stage-1 model, I frozen
            for _ in range(epochs):
                if stage == 1 or net.item_matrix.shape[0] != n_rows:
                    net.item_matrix = net.encode_all(n_rows)
                net.train()
                hists, tgt = sample_pairs(data.train, self.vocab, cfg["per_user"],
                                          cfg["max_items"], rng)
                keys = net.item_matrix[pool]
                for idx in batches(len(tgt), cfg["batch_size"], rng):
                    seq = net.encode([hists[i] for i in idx])
                    logits = seq @ keys.T / cfg["temperature"]
                    loss = F.cross_entropy(
                        logits, remap[torch.from_numpy(tgt[idx]).to(self.device)])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                net.eval()
                epoch += 1
                if valid.requests and best.update(valid.evaluate(self.score), epoch, net):
                    break
        best.restore(net)
        if net.item_matrix.shape[0] != n_rows:
            net.item_matrix = net.encode_all(n_rows)
        net.eval()
        self.info.update(best_epoch=best.best_epoch, valid_ndcg1=best.history,
                         layers=len(net.enc.encoder.layer))

    def score(self, requests: Sequence[ScoreRequest]) -> np.ndarray:
        if self.net is None:
            raise RuntimeError("RecFormer.score called before fit")
        net, cfg = self.net, self.config
        out = np.zeros((len(requests), len(requests[0].candidates) if requests else 0))
        with torch.no_grad():
            for idx in batches(len(requests), 64):
                hists = [self.vocab.rows(requests[i].history[-cfg["max_items"]:])[::-1]
                         for i in idx]
                seq = net.encode(hists)
                cand = torch.tensor([self.vocab.rows(requests[i].candidates) for i in idx],
                                    device=seq.device)
                out[idx] = torch.einsum("bd,bcd->bc", seq, net.item_matrix[cand]
                                        ).double().cpu().numpy()
        return out

    def describe(self) -> dict[str, Any]:
        return dict(self.info)
