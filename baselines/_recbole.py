"""Plumbing shared by the RecBole baselines (BPR-MF, GRU4Rec, SASRec, FMLP-Rec).

RecBole supplies the model classes, its training `Trainer` and its training negative
sampler. Everything about evaluation is ours: after every epoch the system scores the
given validation candidates itself, keeps the best weights in memory and stops with
patience. RecBole's evaluator, its evaluation samplers, checkpoints, log files and
`recbole.quick_start` (which imports ray) are never used.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np


def _numpy_compat() -> None:
    """RecBole 1.2.1's Config reads numpy aliases that numpy 2 removed: add only missing ones."""
    for alias, target in (("float_", np.float64), ("complex_", np.complex128),
                          ("unicode_", np.str_), ("int_", np.int64), ("bool_", np.bool_),
                          ("object_", np.object_), ("str_", np.str_)):
        if alias not in np.__dict__:
            setattr(np, alias, target)


_numpy_compat()

import recbole.model.sequential_recommender  # noqa: E402,F401  (see below)
import recbole.trainer.trainer as _trainer_module  # noqa: E402
import torch  # noqa: E402
from recbole.config import Config  # noqa: E402
from recbole.data.dataloader.general_dataloader import TrainDataLoader  # noqa: E402
from recbole.data.dataset import Dataset  # noqa: E402
from recbole.data.interaction import Interaction  # noqa: E402
from recbole.sampler import Sampler  # noqa: E402
from recbole.trainer import Trainer  # noqa: E402
from recbole.utils import init_seed  # noqa: E402

# Importing any model of recbole.model.sequential_recommender (GRU4Rec, SASRec) runs the
# package's __init__, which imports SINE, whose module calls
# torch.autograd.set_detect_anomaly(True) (recbole 1.2.1, sine.py line 25): from then on
# every backward pass in the process keeps a traceback per op and checks for NaN, and every
# later cell of a `run` or a worker trained that way (a Gemma-3-270M LoRA step 1.48x slower;
# BENCHMARKS.md). The package is imported above, once; switch the mode off again.
torch.autograd.set_detect_anomaly(False)

from baselines.common import EarlyStopping, pad_right  # noqa: E402
from bench.api import ScoreRequest, System, TrainData, UserSequence, Validation  # noqa: E402

USER, ITEM = "user_id", "item_id"
ITEM_SEQ, ITEM_LEN = "item_id_list", "item_length"
DATASET = "molorec_train"  # any name but 'ml-100k', which RecBole redirects to its example


class _Config(Config):
    """RecBole's Config without its process-wide side effects: it reads no sys.argv, runs
    no eval() on string values and never rewrites CUDA_VISIBLE_DEVICES."""

    def _load_cmd_line(self) -> dict:
        return {}

    def _load_variable_config_dict(self, config_dict: dict | None) -> dict:
        return dict(config_dict or {})

    def _init_device(self) -> None:
        d = self.final_config_dict
        d["single_spec"], d["local_rank"] = True, 0
        d["device"] = torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _NullWriter:
    """Stands in for the TensorBoard SummaryWriter RecBole's Trainer opens in the cwd."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


@contextmanager
def _no_tensorboard():
    original = _trainer_module.get_tensorboard
    _trainer_module.get_tensorboard = lambda logger: _NullWriter()
    try:
        yield
    finally:
        _trainer_module.get_tensorboard = original


def check_targets(seq: UserSequence) -> tuple[int, ...]:
    """The sequence's target positions, each a valid index into its items."""
    targets = seq.target_positions()
    for t in targets:
        if isinstance(t, bool) or not isinstance(t, int | np.integer) \
                or not 0 <= t < len(seq.items):
            raise ValueError(f"user {seq.user!r}: target position {t!r} outside its "
                             f"{len(seq.items)} items")
    return targets


def sequential_samples(train: Sequence[UserSequence], item_ids: Mapping[str, int],
                       max_len: int) -> dict[str, np.ndarray]:
    """One sample (items[:t] -> items[t]) per target position t >= 1 (t = 0 has no history);
    the whole sequence before t is context, whether or not its positions are targets."""
    prefixes, targets = [], []
    for seq in train:
        ids = [item_ids[i] for i in seq.items]
        for t in check_targets(seq):
            if t == 0:
                continue
            prefixes.append(ids[max(0, t - max_len):t])
            targets.append(ids[t])
    seqs, lens = pad_right(prefixes, max_len)
    return {ITEM_SEQ: seqs, ITEM_LEN: lens, ITEM: np.array(targets, dtype=np.int64)}


def pair_samples(train: Sequence[UserSequence], user_ids: Mapping[str, int],
                 item_ids: Mapping[str, int]) -> dict[str, np.ndarray]:
    """(user, items[t]) positives for every target position t."""
    users, items = [], []
    for seq in train:
        for t in check_targets(seq):
            users.append(user_ids[seq.user])
            items.append(item_ids[seq.items[t]])
    return {USER: np.array(users, dtype=np.int64), ITEM: np.array(items, dtype=np.int64)}


def recbole_dataset(train: Sequence[UserSequence], config: Config, root: Path
                 ) -> tuple[Dataset, dict[str, int], dict[str, int]]:
    """Export every training (user, item) as an atomic file and let RecBole load it.

    Our ids are written as integer codes, so no id can be misread by pandas (e.g. 'NA');
    returns the dataset and our id -> RecBole internal id maps (0 is RecBole's padding)."""
    users = sorted({s.user for s in train})
    items = sorted({i for s in train for i in s.items})
    ucode = {u: str(n) for n, u in enumerate(users, 1)}
    icode = {i: str(n) for n, i in enumerate(items, 1)}
    folder = root / DATASET
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{USER}:token\t{ITEM}:token\n"]
    lines += [f"{ucode[s.user]}\t{icode[i]}\n" for s in train for i in s.items]
    (folder / f"{DATASET}.inter").write_text("".join(lines), encoding="utf-8")
    with warnings.catch_warnings():  # pandas' chained-assignment notes on RecBole's fillna
        warnings.simplefilter("ignore", FutureWarning)
        dataset = Dataset(config)
    dataset._change_feat_format()  # DataFrame -> Interaction, as Dataset.build() does first
    u2id, i2id = dataset.field2token_id[USER], dataset.field2token_id[ITEM]
    return dataset, {u: u2id[c] for u, c in ucode.items()}, {i: i2id[c] for i, c in icode.items()}


class RecBoleSystem(System):
    """A RecBole model trained epoch by epoch with our own validation-based early stopping.

    Config keys: epochs, patience, batch_size, lr, max_len (sequential models),
    score_batch, and `recbole` (model hyperparameters passed to RecBole unchanged).
    Unknown candidates (never in training) score with a zero embedding, i.e. exactly 0.
    """

    group = "Traditional"
    full_ranking = True  # scores every item cheaply (--negatives all)
    sequential: ClassVar[bool] = True

    def _model_class(self) -> type:
        raise NotImplementedError

    def _recbole_config(self, root: Path) -> dict[str, Any]:
        c = self.config
        out = {
            "seed": self.seed, "reproducibility": True, "data_path": str(root),
            "checkpoint_dir": str(root / "saved"), "show_progress": False, "state": "ERROR",
            "log_wandb": False, "worker": 0, "shuffle": True, "epochs": c["epochs"],
            "train_batch_size": c["batch_size"], "learner": "adam",
            "learning_rate": c["lr"], "weight_decay": c.get("weight_decay", 0.0),
            "load_col": {"inter": [USER, ITEM]}, "USER_ID_FIELD": USER, "ITEM_ID_FIELD": ITEM,
            "MAX_ITEM_LIST_LENGTH": c.get("max_len", 50), "ITEM_LIST_LENGTH_FIELD": ITEM_LEN,
            "LIST_SUFFIX": "_list",
            # CE models need none; BPR draws one uniform negative outside the user's items
            "train_neg_sample_args": None if self.sequential else {
                "distribution": "uniform", "sample_num": 1, "alpha": 1.0, "dynamic": False,
                "candidate_num": 0},
        }
        out.update(c.get("recbole", {}))
        return out

    def _setup(self, data: TrainData, root: Path) -> tuple[Config, Dataset]:
        """RecBole's config and dataset for `data.train` (deterministic), our id maps set."""
        config = _Config(self._model_class(), DATASET, config_dict=self._recbole_config(root))
        dataset, self._users, self._items = recbole_dataset(data.train, config, root)
        return config, dataset

    def fit(self, data: TrainData, valid: Validation) -> None:
        start = time.perf_counter()
        init_seed(self.seed, True)
        with tempfile.TemporaryDirectory(prefix="recbole-") as tmp:
            root = Path(tmp)
            config, dataset = self._setup(data, root)
            if self.sequential:
                max_len = config["MAX_ITEM_LIST_LENGTH"]
                samples = sequential_samples(data.train, self._items, max_len)
                sampler = None
            else:
                samples = pair_samples(data.train, self._users, self._items)
                sampler = Sampler(["train"], [dataset], "uniform").set_phase("train")
            if len(samples[ITEM]) == 0:
                raise ValueError("no training samples: every sequence lacks usable targets")
            train_set = dataset.copy(Interaction({k: torch.from_numpy(v)
                                                  for k, v in samples.items()}))
            init_seed(self.seed, True)
            self.model = self._model_class()(config, dataset).to(config["device"])
            loader = TrainDataLoader(config, train_set, sampler, shuffle=True)
            with _no_tensorboard():
                trainer = Trainer(config, self.model)
            self._train(trainer, loader, valid)
        self._facts = {**self._facts, "train_samples": int(len(samples[ITEM])),
                       "fit_seconds": round(time.perf_counter() - start, 1)}

    def _train(self, trainer: Trainer, loader: TrainDataLoader, valid: Validation) -> None:
        stop = EarlyStopping(self.config["patience"])
        losses, seconds = [], []
        for epoch in range(self.config["epochs"]):
            tick = time.perf_counter()
            with warnings.catch_warnings():  # torch.cuda.amp.GradScaler's deprecation note
                warnings.simplefilter("ignore", FutureWarning)
                loss = trainer._train_epoch(loader, epoch)
            losses.append(round(float(np.sum(loss)), 4))
            seconds.append(round(time.perf_counter() - tick, 1))
            if not valid.requests:  # nothing to select on: keep the last epoch
                stop.best_epoch = epoch
                continue
            if stop.update(valid.evaluate(self.score), epoch, self.model):
                break
        stop.restore(self.model)
        self.model.eval()
        self._facts = {"best_epoch": stop.best_epoch, "epochs_run": len(losses),
                       "valid_ndcg1": stop.history, "train_loss": losses,
                       "epoch_seconds": seconds}

    def _queries(self, requests: Sequence[ScoreRequest]) -> torch.Tensor:
        """(n, d) sequence representations from each request's history."""
        max_len = self.config.get("max_len", 50)
        seqs, lens = pad_right([[self._items[i] for i in req.history if i in self._items]
                                for req in requests], max_len)
        lens = np.maximum(lens, 1)  # an empty history reads the padding row: still finite
        device = next(self.model.parameters()).device
        return self.model.forward(torch.from_numpy(seqs).to(device),
                                  torch.from_numpy(lens).to(device))

    def score(self, requests: Sequence[ScoreRequest]) -> np.ndarray:
        if not hasattr(self, "model"):
            raise RuntimeError(f"{self.name}: call fit() before score()")
        if not requests:
            return np.zeros((0, 0))
        width = len(requests[0].candidates)
        if any(len(r.candidates) != width for r in requests):
            raise ValueError("all requests must have the same number of candidates")
        self.model.eval()
        table = self.model.item_embedding.weight
        out = np.empty((len(requests), width), dtype=np.float64)
        step = self.config.get("score_batch", 512)
        with torch.no_grad():
            for lo in range(0, len(requests), step):
                batch = requests[lo: lo + step]
                ids = torch.tensor([[self._items.get(c, 0) for c in r.candidates] for r in batch],
                                   device=table.device)
                known = torch.tensor([[c in self._items for c in r.candidates] for r in batch],
                                     device=table.device)
                emb = table[ids] * known.unsqueeze(-1)  # unknown items: zero embedding
                q = self._queries(batch)
                out[lo: lo + len(batch)] = (emb * q.unsqueeze(1)).sum(-1).double().cpu().numpy()
        return out

    def describe(self) -> dict[str, Any]:
        return dict(getattr(self, "_facts", {}))

    # -- a frozen sequence encoder for other systems (RecLoRA's user representation) -----
    def sequence_vectors(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """(n, d) float32 sequence representations of item histories (oldest first; the
        last `max_len` known items count), computed without gradients in eval mode."""
        if not self.sequential:
            raise TypeError(f"{self.name} has no sequence representation")
        if not hasattr(self, "model"):
            raise RuntimeError(f"{self.name}: call fit() or load_model() first")
        self.model.eval()
        reqs = [ScoreRequest("", tuple(h), ()) for h in histories]
        step = self.config.get("score_batch", 512)
        with torch.no_grad():
            parts = [self._queries(reqs[lo:lo + step]).float().cpu().numpy()
                     for lo in range(0, len(reqs), step)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)

    def save_model(self, out: Path) -> None:
        """The trained weights (safetensors) and what fit() recorded, to `out`."""
        from safetensors.torch import save_file

        out = Path(out)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(out / "model.safetensors"))
        (out / "facts.json").write_text(json.dumps(self.describe(), indent=1))

    def load_model(self, data: TrainData, path: Path) -> None:
        """Rebuild the model for `data.train` (the split it was trained on) and load the
        weights `save_model` wrote: the same vectors as the instance that trained it."""
        from safetensors.torch import load_file

        path = Path(path)
        init_seed(self.seed, True)
        with tempfile.TemporaryDirectory(prefix="recbole-") as tmp:
            config, dataset = self._setup(data, Path(tmp))
            self.model = self._model_class()(config, dataset).to(config["device"])
        self.model.load_state_dict(load_file(str(path / "model.safetensors")))
        self.model.eval()
        self._facts = json.loads((path / "facts.json").read_text())
