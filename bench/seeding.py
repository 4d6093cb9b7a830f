"""Seeding, written once: the runner seeds every cell with it, and systems reseed their
own stages with it (python's, numpy's and torch's global generators)."""

from __future__ import annotations

import random

import numpy as np


def seed_everything(seed: int) -> None:
    """Same seed => same weights and scores, whatever ran before in this process."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
