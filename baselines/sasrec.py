"""SASRec: RecBole's causal self-attention model, CE loss over all items at the last position
of each (items[:t] -> items[t]) sample."""

from __future__ import annotations

from baselines._recbole import RecBoleSystem

_MODEL = {"n_layers": 2, "n_heads": 2, "hidden_size": 64, "inner_size": 256,
          "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5, "hidden_act": "gelu",
          "layer_norm_eps": 1e-12, "initializer_range": 0.02, "loss_type": "CE"}


class SASRec(RecBoleSystem):
    name = "SASRec"
    profiles = {
        # the paper's shared settings (Adam, lr 1e-3, batch 256, dim 64); RecBole defaults else
        "paper": {"epochs": 300, "patience": 10, "batch_size": 256, "lr": 1e-3,
                  "max_len": 50, "recbole": dict(_MODEL)},
        # sized for 2 busy cores: the last 20 items (an epoch over ML-100K's ~44k prefixes
        # takes ~50-100 s), a larger batch and step, lighter dropout, at most 8 epochs
        "cpu": {"epochs": 8, "patience": 2, "batch_size": 512, "lr": 2e-3,
                "max_len": 20, "recbole": {**_MODEL, "hidden_dropout_prob": 0.2,
                                           "attn_dropout_prob": 0.2}},
        "smoke": {"epochs": 2, "patience": 1, "batch_size": 256, "lr": 1e-3,
                  "max_len": 20, "recbole": {**_MODEL, "n_layers": 1, "hidden_size": 16,
                                             "inner_size": 32}},
    }

    def _model_class(self) -> type:
        from recbole.model.sequential_recommender.sasrec import SASRec as Model

        return Model
