"""BPR-MF: RecBole's BPR matrix factorization, trained on the target positions' items.

Its positives are (user, items[t]) for the target positions t; negatives come from
RecBole's uniform training sampler, which skips every item in the user's sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from baselines._recbole import RecBoleSystem
from bench.api import ScoreRequest


class BPRMF(RecBoleSystem):
    name = "BPR-MF"
    sequential = False
    profiles = {
        # the paper's shared settings (Adam, lr 1e-3, batch 256, dim 64); RecBole's patience
        "paper": {"epochs": 300, "patience": 10, "batch_size": 256, "lr": 1e-3,
                  "recbole": {"embedding_size": 64}},
        # ~1 s an epoch on ML-100K: the paper's settings fit in well under a minute
        "cpu": {"epochs": 200, "patience": 10, "batch_size": 256, "lr": 1e-3,
                "recbole": {"embedding_size": 64}},
        "smoke": {"epochs": 2, "patience": 1, "batch_size": 256, "lr": 1e-3,
                  "recbole": {"embedding_size": 16}},
    }

    def _model_class(self) -> type:
        from recbole.model.general_recommender.bpr import BPR

        return BPR

    def _queries(self, requests: Sequence[ScoreRequest]) -> torch.Tensor:
        """User embeddings; a user unseen in training gets zeros (constant scores)."""
        weight = self.model.user_embedding.weight
        ids = torch.tensor([self._users.get(r.user, 0) for r in requests], device=weight.device)
        known = torch.tensor([r.user in self._users for r in requests], device=weight.device)
        return weight[ids] * known.unsqueeze(-1)
