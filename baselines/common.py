"""What every trained baseline shares: validation-based early stopping and padding.

RecBole's four models and the four text-based systems train epoch by epoch and stop on
the validation candidates with the same rule, and lay histories out the same way.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def device_for(config: dict) -> torch.device:
    """The device a trained baseline runs on: the config's `device` when given (tests,
    or a caller that pins one), else this process's GPU where there is one (a Dask
    worker offering `GPU=1` sees its own; `uses_gpu` asks for one), else the CPU.
    Random draws of the CPU's generators are moved, not redrawn, so a CPU run gives the
    same numbers as before."""
    requested = config.get("device")
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class EarlyStopping:
    """Keep the module state with the best validation score; stop after `patience`
    evaluations without improvement (ties do not improve)."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best = float("-inf")
        self.best_epoch = -1
        self.state: dict[str, torch.Tensor] | None = None
        self.bad = 0
        self.history: list[float] = []

    def update(self, score: float, epoch: int, module: nn.Module) -> bool:
        """Record `score`; returns True when training should stop."""
        self.history.append(round(float(score), 5))
        if score > self.best:
            self.best, self.best_epoch, self.bad = score, epoch, 0
            self.state = copy.deepcopy(module.state_dict())
        else:
            self.bad += 1
        return self.bad >= self.patience

    def restore(self, module: nn.Module) -> None:
        """Load the best state, if any evaluation happened."""
        if self.state is not None:
            module.load_state_dict(self.state)


def pad_right(rows: Sequence[Sequence[int]], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the last `max_len` of each row, oldest first, zero-padded on the right
    (RecBole's layout, and the text encoders'): (ids (n, max_len), lengths)."""
    out = np.zeros((len(rows), max_len), dtype=np.int64)
    lens = np.zeros(len(rows), dtype=np.int64)
    for n, r in enumerate(rows):
        r = list(r)[-max_len:] if max_len > 0 else []
        out[n, :len(r)] = r
        lens[n] = len(r)
    return out, lens
