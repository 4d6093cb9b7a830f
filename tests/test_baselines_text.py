"""Text-based baselines (UniSRec, VQ-Rec, RecFormer, P5): their distinctive parts and the
system contract on a synthetic corpus whose titles carry the signal (genre words)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from baselines import text_encoder
from baselines._textseq import ItemVocab, Workspace, next_item_windows
from baselines.p5 import P5, id_strings
from baselines.recformer import RecFormer
from baselines.unisrec import MoEAdaptor, UniSRec, item_drop
from baselines.vqrec import VQRec, effective_bits, fit_pq
from bench.api import ScoreRequest, TrainData, UserSequence, Validation
from bench.testing import check_system

GENRES = {
    "space": ["galaxy", "rocket", "alien", "orbit", "planet", "star"],
    "love": ["kiss", "wedding", "heart", "romance", "bride", "valentine"],
    "crime": ["murder", "heist", "gangster", "detective", "robbery", "mafia"],
    "horse": ["cowboy", "ranch", "saddle", "rodeo", "frontier", "sheriff"],
}
TINY = {  # smoke settings cut further: these tests check behaviour, not accuracy
    UniSRec: {"pretrain_epochs": 1, "epochs": 2},
    VQRec: {"pretrain_epochs": 1, "perm_epochs": 1, "epochs": 2},
    RecFormer: {"stage1_epochs": 1, "stage2_epochs": 1},
    P5: {"epochs": 2},
}


def synthetic(seed: int = 0, n_users: int = 40, length: int = 10
              ) -> tuple[TrainData, Validation, list[ScoreRequest], list[str]]:
    """Each user mostly watches one genre; cold items (never in training or validation)
    are the test candidates, as in the new-item protocol."""
    rng = random.Random(seed)
    items, genre_of = {}, {}
    for g, words in GENRES.items():
        for k in range(20):
            iid = f"{g}{k}"
            items[iid] = f"{words[k % 6]} {rng.choice(words)} {g} story {k}"
            genre_of[iid] = g
    cold = {i for i in items if int(i.lstrip("abcdefghijklmnopqrstuvwxyz")) >= 12}
    warm = [i for i in items if i not in cold]

    def walk(n: int, g: str) -> list[str]:
        pool = [i for i in warm if genre_of[i] == g]
        return [rng.choice(pool) if rng.random() < 0.85 else rng.choice(warm)
                for _ in range(n)]

    train, general, vreq, vpos, treq, tpos = [], [], [], [], [], []
    for u in range(n_users):
        g = list(GENRES)[u % len(GENRES)]
        seq = walk(length + 1, g)
        train.append(UserSequence(f"u{u}", tuple(seq[:-1])))
        general.append(UserSequence(f"g{u}", tuple(walk(length, g))))
        neg = rng.sample([i for i in warm if i != seq[-1]], 29)
        neg.insert(rng.randrange(30), seq[-1])
        vreq.append(ScoreRequest(f"u{u}", tuple(seq[:-1]), tuple(neg)))
        vpos.append(seq[-1])
        pos = rng.choice(sorted(i for i in cold if genre_of[i] == g))
        cands = rng.sample(sorted(i for i in cold if i != pos), 29)
        cands.insert(rng.randrange(30), pos)
        treq.append(ScoreRequest(f"u{u}", tuple(seq), tuple(cands)))
        tpos.append(pos)
    data = TrainData(items, tuple(train), tuple(general), "cold", "synthetic")
    return data, Validation(tuple(vreq), tuple(vpos)), treq, tpos


@pytest.fixture(scope="module")
def toy():
    return synthetic()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("textbase"))


def make(cls, seed: int, workdir: str | None, **extra):
    return cls({**cls.config_for("smoke"), **TINY[cls], **extra}, seed, workdir)


# --- shared pieces ---------------------------------------------------------------------

def test_minilm_is_found_offline_and_vectors_are_cached(tmp_path, monkeypatch):
    assert (text_encoder.minilm_dir() / "model.safetensors").is_file()
    texts = ["galaxy rocket", "kiss wedding", "galaxy planet"]
    v = text_encoder.text_vectors(texts, "minilm", tmp_path)
    assert v.shape == (3, 384) and np.isfinite(v).all()
    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    assert unit[0] @ unit[2] > unit[0] @ unit[1]  # a real sentence encoder, not noise
    monkeypatch.setattr(text_encoder, "encode_texts", lambda *a, **k: 1 / 0)
    assert np.array_equal(text_encoder.text_vectors(texts, "minilm", tmp_path), v)  # cached
    with pytest.raises(ZeroDivisionError):  # other texts are a different key
        text_encoder.text_vectors(texts[:2], "minilm", tmp_path)


def test_missing_text_model_gives_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="neither a local directory"):
        text_encoder.resolve_model_dir(str(tmp_path / "no-such-model"))


def test_windows_use_each_allowed_target_once_with_context():
    vocab = ItemVocab({f"i{k}": f"t{k}" for k in range(30)})
    seq = UserSequence("u", tuple(f"i{k}" for k in range(30)))
    x, lens, y = next_item_windows([seq], vocab, max_len=8)
    got = sorted(int(t) for t in y[y > 0])
    assert got == list(range(2, 31))  # rows of items[1:], each exactly once
    for w in range(len(x)):  # a target's context is the window's items before it
        for j in np.flatnonzero(y[w]):
            assert y[w, j] == x[w, j] + 1
            assert j >= 4 or x[w, 0] == 1  # >= max_len // 2 context unless at the start
    few = UserSequence("u", seq.items, targets=(3, 17))
    _, _, y2 = next_item_windows([few], vocab, max_len=8)
    assert sorted(int(t) for t in y2[y2 > 0]) == [4, 18]


def test_unknown_items_and_unfitted_systems_fail_clearly(toy):
    vocab = ItemVocab({"a": "t a"})
    with pytest.raises(ValueError, match="has no title"):
        vocab.rows(["a", "zz"])
    for cls in (UniSRec, VQRec, RecFormer, P5):
        with pytest.raises(RuntimeError, match="before fit"):
            make(cls, 0, None).score(toy[2][:1])


def test_workspace_reuses_a_cached_state(tmp_path):
    ws = Workspace(str(tmp_path))
    calls = []
    build = lambda: calls.append(1) or {"w": torch.ones(2)}  # noqa: E731
    a = ws.cached_state("m", "k" * 64, build)
    b = ws.cached_state("m", "k" * 64, build)
    assert calls == [1] and torch.equal(a["w"], b["w"])


# --- UniSRec ---------------------------------------------------------------------------

def test_moe_gate_sums_to_one_in_training_and_eval():
    torch.manual_seed(0)
    moe = MoEAdaptor(16, 8, n_experts=8, dropout=0.2)
    with torch.no_grad():
        moe.w_gate.normal_()
        moe.w_noise.normal_()
    x = torch.randn(5, 7, 16)
    for train in (True, False):
        moe.train(train)
        g = moe.gates(x)
        assert g.shape == (5, 7, 8) and (g >= 0).all()
        assert torch.allclose(g.sum(-1), torch.ones(5, 7), atol=1e-6)
    assert moe(x).shape == (5, 7, 8)
    moe.eval()  # the output is the gate-weighted sum of the whitened experts
    v = x[0, 0]
    experts = torch.stack([(v - moe.bias[e]) @ moe.weight[e] for e in range(8)])
    expect = (moe.gates(v).unsqueeze(-1) * experts).sum(0)
    assert torch.allclose(moe(v), expect, atol=1e-5)


def test_item_drop_keeps_order_and_at_least_one_item():
    torch.manual_seed(0)
    hist = torch.tensor([[5, 6, 7, 8, 0], [9, 0, 0, 0, 0]])
    out, lens = item_drop(hist, torch.tensor([4, 1]), ratio=0.5)
    for row, n, src in zip(out, lens, hist, strict=True):
        kept = row[:n].tolist()
        assert 1 <= n <= (src > 0).sum() and (row[n:] == 0).all()
        assert kept == [v for v in src.tolist() if v in kept]  # order preserved


# --- VQ-Rec ----------------------------------------------------------------------------

def test_pq_codes_are_seeded_and_fit_on_training_items_only():
    rng = np.random.default_rng(0)
    vec = rng.standard_normal((60, 32)).astype(np.float32)
    train = np.arange(40)
    a, bits = fit_pq(vec, train, n_sub=4, bits=8, seed=3)
    b, _ = fit_pq(vec, train, n_sub=4, bits=8, seed=3)
    assert bits == effective_bits(40, 8) < 8  # few items: fewer bits, training still works
    assert a.shape == (60, 4) and a.max() < 2 ** bits and np.array_equal(a, b)
    assert not np.array_equal(a, fit_pq(vec, train, 4, 8, seed=4)[0])
    moved = vec.copy()
    moved[40:] = rng.standard_normal((20, 32)) * 50  # non-training items change...
    c, _ = fit_pq(moved, train, n_sub=4, bits=8, seed=3)
    assert np.array_equal(a[:40], c[:40])  # ...the index (and training items' codes) do not
    assert fit_pq(vec[:5], np.arange(3), 4, 8, seed=0)[1] == 1  # 3 items: 1 bit, no failure
    # fewer training items than dimensions: plain PQ instead of OPQ (faiss would crash)
    assert fit_pq(vec[:, :16].repeat(8, 1)[:20], np.arange(10), 4, 8, seed=0)[0].shape == (20, 4)


def test_vqrec_quantizes_only_target_training_items(toy, workdir):
    data, valid, _, _ = toy
    model = make(VQRec, 0, workdir)
    model.fit(data, valid)
    seen = {i for s in data.train for i in s.items}
    assert model.describe()["target_pq_items"] == len(seen) < len(data.titles)


# --- RecFormer -------------------------------------------------------------------------

def test_recformer_items_and_sequences_share_one_encoder(toy, workdir):
    data, valid, test, _ = toy
    model = make(RecFormer, 0, workdir, pretrain_epochs=0, stage1_epochs=0, stage2_epochs=0)
    model.fit(data, valid)
    net = model.net
    rows = model.vocab.rows(["space0", "love3"])
    with torch.no_grad():
        as_items = net.encode_all(len(model.vocab))[rows]
        as_seqs = net.encode([[r] for r in rows])  # a one-item sequence is the item
    assert torch.allclose(as_items, as_seqs, atol=1e-5)
    assert torch.allclose(net.item_matrix[rows], as_items, atol=1e-5)
    req = ScoreRequest("u0", ("crime4",), test[0].candidates[:29] + ("crime4",))
    s = model.score([req])[0]
    assert s.argmax() == 29 and s[29] == pytest.approx(1.0, abs=1e-5)
    batch = net.collate([[rows[0], rows[1]]])  # most recent first, item positions 1, 2
    assert batch["item_pos"][0, 0] == 0 and set(batch["item_pos"][0].tolist()) == {0, 1, 2}
    assert set(batch["types"][0].tolist()) == {0, 1, 2}  # CLS, key, value


# --- P5 --------------------------------------------------------------------------------

def test_p5_ids_are_seeded_fixed_width_permutations():
    names = [f"i{k}" for k in range(150)]
    a, b = id_strings(names, 0, 11), id_strings(names, 1, 11)
    assert {len(v) for v in a.values()} == {3}
    assert sorted(int(v) for v in a.values()) == list(range(150))
    assert a != b and a == id_strings(names, 0, 11)
    assert a["i149"] != "149"  # the last items are not the highest numbers


def test_p5_scores_exactly_the_candidate_id_strings(toy, workdir, monkeypatch):
    data, valid, test, _ = toy
    model = make(P5, 0, workdir)
    model.fit(data, valid)
    net = model.net
    seen = []
    real = net.target_logprob
    monkeypatch.setattr(net, "target_logprob",
                        lambda h, m, t: seen.append(t.clone()) or real(h, m, t))
    scores = model.score(test[:3])
    assert scores.shape == (3, 30) and len(seen) == 1
    rows = seen[0].tolist()
    expected = [net.tok.ident(model.item_code[c]) + [net.tok.eos_id]
                for r in test[:3] for c in r.candidates]
    assert rows == expected  # 90 rows: each request's 30 candidates, in order, with EOS
    # each score is that candidate's own teacher-forced log-likelihood
    monkeypatch.setattr(net, "target_logprob", real)
    with torch.no_grad():
        prompt = net.prompt(0, model.user_code["u0"],
                            [model.item_code[i] for i in test[0].history[-5:]])
        h, m = net.encode([prompt])
        one = net.target_logprob(h, m, torch.tensor([expected[7]]))
    assert scores[0, 7] == pytest.approx(float(one), abs=1e-4)
    assert (scores < 0).all()


# --- the system contract ---------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("cls", [UniSRec, VQRec, RecFormer, P5])
def test_systems_score_cold_candidates_deterministically(cls, toy, workdir):
    """The contract (bench.testing.check_system): the second instance reuses the first
    one's pretrained weights from the store, and must score exactly as it did."""
    data, valid, test, _ = toy
    checked = check_system(cls, config={**cls.config_for("smoke"), **TINY[cls]},
                           domain=(data, valid, test), workdir=workdir)
    assert np.isfinite(checked.scores).all()
    assert checked.system.describe().get("pretrained")
    assert checked.scores.std(axis=1).min() > 0  # cold candidates get distinct scores


@pytest.mark.slow
@pytest.mark.parametrize("cls", [UniSRec, VQRec, RecFormer])
def test_text_methods_rank_cold_items_by_their_titles(cls, toy, workdir):
    from protocols.metrics import ndcg_at_k, positive_index

    data, valid, test, positives = toy
    # the toy corpus is one batch per epoch: more (cheap) epochs than the smoke profile
    longer = {"stage1_epochs": 2} if cls is RecFormer else \
        {"pretrain_epochs": 10, "epochs": 30, "patience": 30}
    model = make(cls, 0, workdir, **longer)
    model.fit(data, valid)
    ndcg = ndcg_at_k(model.score(test), positive_index(test, positives), 3).mean()
    # random is 0.07 and the best possible about 0.27 (~8 cold items per genre): only
    # the titles link a cold item to the user's genre
    assert ndcg > 0.15
