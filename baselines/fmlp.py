"""FMLP-Rec (Zhou et al., 2022): an all-MLP sequence model whose token mixing is a learnable
filter in the frequency domain. RecBole 1.2.1 lacks it, so it is a RecBole
`SequentialRecommender` here, trained by the same plumbing as SASRec.

The filter is circular and not causal: every position sees the whole window. So sequences
are left-aligned (items at 0..len-1, as RecBole lays them out), padding is zeroed before
every FFT so its content cannot leak in, and the loss is taken at the last item only.
"""

from __future__ import annotations

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from torch import nn

from baselines._recbole import RecBoleSystem


class FilterLayer(nn.Module):
    """rfft along the sequence, times a learnable complex weight per (frequency, channel),
    irfft back to the window length; dropout, residual and LayerNorm."""

    def __init__(self, max_len: int, hidden: int, dropout: float, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, max_len // 2 + 1, hidden, 2) * 0.02)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        length = x.size(1)
        spec = torch.fft.rfft(x * mask, dim=1, norm="ortho")
        mixed = torch.fft.irfft(spec * torch.view_as_complex(self.weight), n=length, dim=1,
                                norm="ortho")
        return self.norm(self.dropout(mixed) + x)


class FeedForward(nn.Module):
    """Point-wise two-layer MLP with residual and LayerNorm."""

    def __init__(self, hidden: int, inner: int, dropout: float, eps: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(), nn.Linear(inner, hidden),
                                 nn.Dropout(dropout))
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.net(x) + x)


class FMLPRecModel(SequentialRecommender):
    """RecBole model: item + position embedding, LayerNorm, dropout, then n_layers of
    (FilterLayer, FeedForward); CE over all items at position len-1."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        hidden, dropout = config["hidden_size"], config["hidden_dropout_prob"]
        eps = config["layer_norm_eps"]
        if config["loss_type"] != "CE":
            raise ValueError(f"FMLP-Rec trains with loss_type 'CE', not {config['loss_type']!r}")
        self.initializer_range = config["initializer_range"]
        self.item_embedding = nn.Embedding(self.n_items, hidden, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.filters = nn.ModuleList(FilterLayer(self.max_seq_length, hidden, dropout, eps)
                                     for _ in range(config["n_layers"]))
        self.ffns = nn.ModuleList(FeedForward(hidden, config["inner_size"], dropout, eps)
                                  for _ in range(config["n_layers"]))
        self.loss_fct = nn.CrossEntropyLoss()
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    def encode(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """(B, L, H) outputs at every position; positions >= len are padding."""
        length = item_seq.size(1)
        positions = torch.arange(length, device=item_seq.device)
        mask = (positions.unsqueeze(0) < item_seq_len.unsqueeze(1)).unsqueeze(-1)
        x = self.item_embedding(item_seq) + self.position_embedding(positions).unsqueeze(0)
        x = self.dropout(self.LayerNorm(x))
        mask = mask.to(x.dtype)
        for filt, ffn in zip(self.filters, self.ffns, strict=True):
            x = ffn(filt(x, mask))
        return x

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        return self.gather_indexes(self.encode(item_seq, item_seq_len), item_seq_len - 1)

    def calculate_loss(self, interaction) -> torch.Tensor:
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        logits = seq_output @ self.item_embedding.weight.T
        return self.loss_fct(logits, interaction[self.POS_ITEM_ID])

    def predict(self, interaction) -> torch.Tensor:
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return (seq_output * self.item_embedding(interaction[self.ITEM_ID])).sum(-1)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return seq_output @ self.item_embedding.weight.T


_MODEL = {"n_layers": 2, "hidden_size": 64, "inner_size": 256, "hidden_dropout_prob": 0.5,
          "layer_norm_eps": 1e-12, "initializer_range": 0.02, "loss_type": "CE"}


class FMLPRec(RecBoleSystem):
    name = "FMLP-Rec"
    profiles = {
        # the paper's shared settings (Adam, lr 1e-3, batch 256, dim 64); FMLP-Rec's own else
        "paper": {"epochs": 300, "patience": 10, "batch_size": 256, "lr": 1e-3,
                  "max_len": 50, "recbole": dict(_MODEL)},
        # sized for 2 busy cores: the last 20 items (an epoch over ML-100K's ~44k prefixes
        # takes ~50-100 s), a larger batch and step, lighter dropout, at most 8 epochs
        "cpu": {"epochs": 8, "patience": 2, "batch_size": 512, "lr": 2e-3,
                "max_len": 20, "recbole": {**_MODEL, "hidden_dropout_prob": 0.2}},
        "smoke": {"epochs": 2, "patience": 1, "batch_size": 256, "lr": 1e-3,
                  "max_len": 20, "recbole": {**_MODEL, "n_layers": 1, "hidden_size": 16,
                                             "inner_size": 32}},
    }

    def _model_class(self) -> type:
        return FMLPRecModel
