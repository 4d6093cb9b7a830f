"""The RecBole baselines: sample building, training under our pins, scoring contract, FMLP-Rec."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from baselines._recbole import (
    DATASET,
    ITEM,
    ITEM_LEN,
    ITEM_SEQ,
    USER,
    _Config,
    _numpy_compat,
    pair_samples,
    sequential_samples,
)
from baselines.bpr import BPRMF
from baselines.fmlp import FMLPRec, FMLPRecModel
from baselines.gru4rec import GRU4Rec
from baselines.sasrec import SASRec
from bench.api import ScoreRequest, TrainData, UserSequence, Validation
from bench.testing import check_system

SYSTEMS = (BPRMF, GRU4Rec, SASRec, FMLPRec)
N_ITEMS = 40


def synthetic(n_users: int = 60, length: int = 12, seed: int = 0) -> tuple[TrainData, Validation]:
    """Each user walks i, i+1, i+2, ... (mod N_ITEMS): the next item is fully learnable."""
    rng = random.Random(seed)
    items = [f"i{k}" for k in range(N_ITEMS)]
    train, requests, positives = [], [], []
    for u in range(n_users):
        start = rng.randrange(N_ITEMS)
        seq = [items[(start + k) % N_ITEMS] for k in range(length + 1)]
        train.append(UserSequence(f"u{u}", tuple(seq[:-1])))
        cands = rng.sample([i for i in items if i != seq[-1]], 29)
        cands.insert(rng.randrange(30), seq[-1])
        requests.append(ScoreRequest(f"u{u}", tuple(seq[:-1]), tuple(cands)))
        positives.append(seq[-1])
    data = TrainData({i: f"title {i}" for i in items}, tuple(train), (), "warm", "synthetic")
    return data, Validation(tuple(requests), tuple(positives))


@pytest.fixture(scope="module")
def toy():
    return synthetic()


# --- training samples ---------------------------------------------------------------------

def test_sequential_samples_follow_the_target_positions():
    ids = {f"i{k}": k + 1 for k in range(8)}
    seq = UserSequence("u", tuple(f"i{k}" for k in range(8)), targets=(2, 6))
    s = sequential_samples([seq], ids, max_len=4)
    assert s[ITEM].tolist() == [3, 7]  # items[2], items[6]
    assert s[ITEM_LEN].tolist() == [2, 4]
    # history is everything before t (targets or not), the last max_len of it, left-aligned
    assert s[ITEM_SEQ].tolist() == [[1, 2, 0, 0], [3, 4, 5, 6]]


def test_default_targets_give_every_prefix_and_position_zero_is_skipped():
    ids = {f"i{k}": k + 1 for k in range(5)}
    full = sequential_samples([UserSequence("u", tuple(ids))], ids, max_len=10)
    assert full[ITEM].tolist() == [2, 3, 4, 5]
    with_zero = sequential_samples([UserSequence("u", tuple(ids), targets=(0, 3))], ids, 10)
    assert with_zero[ITEM].tolist() == [4]


def test_pair_samples_are_the_target_items_only():
    ids = {f"i{k}": k + 1 for k in range(6)}
    seqs = [UserSequence("a", tuple(ids), targets=(1, 4)), UserSequence("b", ("i0", "i5"))]
    s = pair_samples(seqs, {"a": 1, "b": 2}, ids)
    assert list(zip(s[USER].tolist(), s[ITEM].tolist(), strict=True)) == [(1, 2), (1, 5), (2, 6)]


def test_scoring_before_fit_is_a_clear_error(toy):
    with pytest.raises(RuntimeError, match="fit"):
        SASRec(SASRec.config_for("smoke"), seed=0).score(toy[1].requests)


@pytest.mark.parametrize("bad", [(5,), (-1,), (1.0,)])
def test_out_of_range_targets_are_an_error(bad):
    ids = {f"i{k}": k + 1 for k in range(5)}
    with pytest.raises(ValueError, match="target position"):
        sequential_samples([UserSequence("u", tuple(ids), targets=bad)], ids, 10)


def test_fewshot_targets_shrink_what_a_system_trains_on(toy):
    data, valid = toy
    few = TrainData(data.titles, tuple(UserSequence(s.user, s.items, (len(s.items) - 1,))
                                       for s in data.train), (), "fewshot-10", "synthetic")
    system = SASRec(SASRec.config_for("smoke"), seed=0)
    system.fit(few, valid)
    assert system.describe()["train_samples"] == len(few.train)


# --- RecBole under our pins -----------------------------------------------------------------

def test_numpy_shim_restores_only_missing_aliases(monkeypatch):
    monkeypatch.delattr(np, "float_")  # as under numpy 2
    kept = np.int_
    _numpy_compat()
    assert np.float_ is np.float64 and np.int_ is kept
    _Config(SASRec._model_class(None), DATASET, config_dict={"train_neg_sample_args": None})


def test_a_recbole_model_trains_and_learns_the_pattern(toy):
    data, valid = toy
    config = {**GRU4Rec.config_for("smoke"), "epochs": 8, "patience": 8, "lr": 1e-2}
    system = GRU4Rec(config, seed=0)
    system.fit(data, valid)
    facts = system.describe()
    assert facts["train_loss"][-1] < 0.8 * facts["train_loss"][0]
    assert valid.evaluate(system.score) > 0.3  # random is 1/30


@pytest.mark.parametrize("cls", SYSTEMS, ids=lambda c: c.name)
def test_the_contract_holds(cls, toy):
    data, valid = toy
    checked = check_system(cls, domain=(data, valid, valid.requests), seed=3)
    assert np.isfinite(checked.scores).all() and cls.group == "Traditional"


@pytest.fixture(scope="module")
def fitted(toy):
    data, valid = toy
    out = {}
    for cls in (BPRMF, SASRec):
        system = cls(cls.config_for("smoke"), seed=0)
        system.fit(data, valid)
        out[cls.name] = system
    return out


@pytest.mark.parametrize("name", ["BPR-MF", "SASRec"])
def test_scores_depend_only_on_the_given_candidates(name, fitted, toy):
    """No candidate sampling: scoring draws no random numbers, and a candidate's score does
    not depend on which other candidates share its list or on their order."""
    system, (_, valid) = fitted[name], toy
    reqs = valid.requests[:8]
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    base = system.score(reqs)
    assert (np.random.get_state()[1] == np_state).all()
    assert torch.equal(torch.get_rng_state(), torch_state)
    flipped = [ScoreRequest(r.user, r.history, r.candidates[::-1]) for r in reqs]
    np.testing.assert_allclose(system.score(flipped), base[:, ::-1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(system.score(reqs[3:5]), base[3:5], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["BPR-MF", "SASRec"])
def test_unknown_items_and_users_score_finite(name, fitted, toy):
    system, (_, valid) = fitted[name], toy
    req = valid.requests[0]
    cands = ("new-item",) + req.candidates[1:]
    odd = [ScoreRequest(req.user, req.history + ("new-item",), cands),
           ScoreRequest("new-user", ("never-seen",), cands),
           ScoreRequest("new-user", (), cands)]
    scores = system.score(odd)
    assert scores.shape == (3, 30) and np.isfinite(scores).all()
    assert (scores[:, 0] == 0).all()  # the zero embedding
    # an unknown item in the history is skipped, not mistaken for another item
    np.testing.assert_allclose(scores[0, 1:], system.score([req])[0, 1:], rtol=1e-6, atol=1e-6)


def test_a_saved_sasrec_loads_with_the_same_vectors_and_scores(fitted, toy, tmp_path):
    """RecLoRA's frozen recommender: save_model / load_model rebuild the trained model from
    the training split alone, and sequence_vectors are the queries scoring uses."""
    (data, valid), system = toy, fitted["SASRec"]
    system.save_model(tmp_path)
    again = SASRec(SASRec.config_for("smoke"), seed=5)  # another seed: weights come from disk
    again.load_model(data, tmp_path)
    reqs = valid.requests[:6]
    np.testing.assert_array_equal(again.score(reqs), system.score(reqs))
    histories = [r.history for r in reqs] + [()]
    vecs = again.sequence_vectors(histories)
    assert vecs.shape == (7, 16) and vecs.dtype == np.float32 and np.isfinite(vecs).all()
    np.testing.assert_array_equal(vecs, system.sequence_vectors(histories))
    assert not np.allclose(vecs[0], vecs[1])  # users differ
    emb = system.model.item_embedding.weight.detach()
    ids = torch.tensor([system._items[c] for c in reqs[0].candidates])
    np.testing.assert_allclose(system.score(reqs[:1])[0], (emb[ids] @ torch.from_numpy(vecs[0]))
                               .numpy(), rtol=1e-5, atol=1e-5)
    assert again.describe() == system.describe()
    with pytest.raises(TypeError, match="no sequence representation"):
        fitted["BPR-MF"].sequence_vectors(histories)


# --- FMLP-Rec ------------------------------------------------------------------------------

class _FakeDataset:
    def num(self, field: str) -> int:
        return N_ITEMS + 1


def _fmlp(max_len: int = 8) -> FMLPRecModel:
    params = {**FMLPRec.config_for("smoke")["recbole"], "MAX_ITEM_LIST_LENGTH": max_len,
              "train_neg_sample_args": None}
    torch.manual_seed(0)
    model = FMLPRecModel(_Config(FMLPRecModel, DATASET, config_dict=params), _FakeDataset())
    with torch.no_grad():  # make the filters strong enough to see their mixing clearly
        for f in model.filters:
            f.weight.normal_(0.0, 1.0)
    return model.eval()


def test_fmlp_filter_is_not_causal_but_ignores_padding():
    model = _fmlp()
    seq = torch.tensor([[5, 6, 7, 8, 9, 0, 0, 0]])
    length = torch.tensor([5])
    later = seq.clone()
    later[0, 3] = 20  # change a position after position 1
    with torch.no_grad():
        base, changed = model.encode(seq, length), model.encode(later, length)
        assert not torch.allclose(base[0, 1], changed[0, 1], atol=1e-4)
        padded = seq.clone()
        padded[0, 5:] = torch.tensor([30, 31, 32])  # junk after the sequence
        np.testing.assert_allclose(model(padded, length).numpy(), model(seq, length).numpy(),
                                   rtol=1e-5, atol=1e-6)


def test_fmlp_loss_decreases_on_a_tiny_task():
    model = _fmlp().train()
    rng = np.random.default_rng(0)
    starts = rng.integers(1, N_ITEMS - 8, size=64)
    seqs = torch.tensor([[s + k for k in range(5)] + [0, 0, 0] for s in starts])
    batch = {ITEM_SEQ: seqs, ITEM_LEN: torch.full((64,), 5), ITEM: torch.tensor(starts + 5)}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = model.calculate_loss(batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_importing_a_recbole_sequential_model_leaves_anomaly_detection_off():
    """RecBole's SINE module turns on autograd's anomaly detection for the whole process
    when any of its sequential models is imported; every later backward pass was then
    several times slower. Checked in a fresh interpreter, where the import really runs."""
    import subprocess
    import sys

    code = ("import torch, baselines.gru4rec\n"
            "from recbole.model.sequential_recommender.gru4rec import GRU4Rec\n"
            "from recbole.model.sequential_recommender.sine import SINE\n"
            "print(torch.is_anomaly_enabled())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300)
    assert out.stdout.split() == ["False"]
