"""GRU4Rec: RecBole's GRU sequence model, CE loss over all items, one sample per target."""

from __future__ import annotations

from baselines._recbole import RecBoleSystem

_MODEL = {"embedding_size": 64, "hidden_size": 128, "num_layers": 1, "dropout_prob": 0.3,
          "loss_type": "CE"}


class GRU4Rec(RecBoleSystem):
    name = "GRU4Rec"
    profiles = {
        # the paper's shared settings (Adam, lr 1e-3, batch 256, dim 64); RecBole defaults else
        "paper": {"epochs": 300, "patience": 10, "batch_size": 256, "lr": 1e-3,
                  "max_len": 50, "recbole": dict(_MODEL)},
        # sized for 2 busy cores: the last 20 items (an epoch over ML-100K's ~44k prefixes
        # takes ~50-100 s), a larger batch and step, at most 8 epochs
        "cpu": {"epochs": 8, "patience": 2, "batch_size": 512, "lr": 2e-3,
                "max_len": 20, "recbole": dict(_MODEL)},
        "smoke": {"epochs": 2, "patience": 1, "batch_size": 256, "lr": 1e-3,
                  "max_len": 20, "recbole": {**_MODEL, "embedding_size": 16, "hidden_size": 16}},
    }

    def _model_class(self) -> type:
        from recbole.model.sequential_recommender.gru4rec import GRU4Rec as Model

        return Model
