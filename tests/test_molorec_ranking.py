"""Ranking: shared-prefix scoring equals naive scoring on every architecture we run (a
sliding window shorter than the prompt, final-logit soft-capping), restricted
vocabularies, yes/no logits, greedy decoding; generate-mode parsing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from molorec import lm
from molorec import ranking as R
from protocols import metrics as M
from tests.models import ARCHITECTURES


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def model(request):
    return ARCHITECTURES[request.param]()


def _case(seed=0, n=30):
    rng = np.random.default_rng(seed)
    prompt = rng.integers(1, 300, size=120).tolist()  # longer than gemma3()'s window
    answers = [rng.integers(1, 300, size=int(rng.integers(1, 9))).tolist() for _ in range(n)]
    return prompt, answers


def _plain_logprob(model, prompt, answer) -> float:
    """log p(answer | prompt) from one ordinary forward and its full logits."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + answer])).logits[0]
    logp = torch.log_softmax(logits[len(prompt) - 1:-1].float(), -1)
    return float(logp.gather(-1, torch.tensor(answer)[:, None]).sum())


@pytest.mark.parametrize("sharing", R.KV_SHARING)
def test_shared_prefix_scores_equal_naive(model, sharing):
    prompt, answers = _case()
    shared, lengths = R.answer_logprobs(model, prompt, answers, sharing)
    naive, lengths2 = R.answer_logprobs_naive(model, prompt, answers)
    np.testing.assert_allclose(shared, naive, atol=1e-4)
    assert (lengths == lengths2).all() and (lengths == [len(a) for a in answers]).all()
    assert np.isfinite(shared).all() and (shared < 0).all()
    # and both are the model's own distribution (soft-capping included)
    for j in (0, 7):
        assert naive[j] == pytest.approx(_plain_logprob(model, prompt, answers[j]), abs=1e-4)


def test_packed_scoring_keeps_the_sliding_window():
    """Without per-layer masks the packed path would give the sliding layers full
    attention over a prompt longer than their window: visibly different scores."""
    model = ARCHITECTURES["gemma3"]()
    prompt, answers = _case()
    naive, _ = R.answer_logprobs_naive(model, prompt, answers)
    real = lm.sliding_window
    try:
        lm.sliding_window = lambda m: None  # what a single 4D mask amounts to
        bypassed, _ = R.answer_logprobs(model, prompt, answers, "packed")
    finally:
        lm.sliding_window = real
    assert np.abs(bypassed - naive).max() > 1e-2


def test_a_layer_type_we_cannot_mask_is_refused(monkeypatch):
    model = ARCHITECTURES["gemma3"]()
    monkeypatch.setattr(lm, "layer_types", lambda m: ("chunked_attention",))
    prompt, answers = _case()
    with pytest.raises(lm.UnsupportedModel, match="sharing: batch"):
        R.answer_logprobs(model, prompt, answers, "packed")


def test_restricted_vocabulary_renormalizes_exactly(model):
    prompt, answers = _case(3)
    vocab = torch.tensor(sorted({t for a in answers for t in a}))
    full, _ = R.answer_logprobs(model, prompt, answers)
    for sharing in R.KV_SHARING:
        got, _ = R.answer_logprobs(model, prompt, answers, sharing, vocab)
        naive, _ = R.answer_logprobs_naive(model, prompt, answers, vocab)
        np.testing.assert_allclose(got, naive, atol=1e-4)
    assert (got > full).all()  # a smaller normalizer: every answer more likely
    # by hand for one answer: softmax over the vocabulary's logits only
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + answers[0]])).logits[0]
    rows = logits[len(prompt) - 1:-1, vocab].float().log_softmax(-1)
    cols = [vocab.tolist().index(t) for t in answers[0]]
    assert got[0] == pytest.approx(float(rows[torch.arange(len(cols)), cols].sum()), abs=1e-4)
    with pytest.raises(ValueError, match="outside the scoring vocabulary"):
        R.answer_logprobs(model, prompt, [[int(vocab.max()) + 1]], vocab=vocab)


def test_single_token_answers_and_bad_input(model):
    prompt, _ = _case()
    answers = [[5], [6], [7]]
    shared, _ = R.answer_logprobs(model, prompt, answers)
    naive, _ = R.answer_logprobs_naive(model, prompt, answers)
    np.testing.assert_allclose(shared, naive, atol=1e-4)
    with pytest.raises(ValueError):
        R.answer_logprobs(model, prompt, [[5], []])
    with pytest.raises(ValueError):
        R.answer_logprobs(model, prompt, [[5]], sharing="nope")


def test_length_normalization():
    total, lengths = np.array([-4.0, -3.0]), np.array([4.0, 1.0])
    assert R.normalize(total, lengths, "mean").tolist() == [-1.0, -3.0]
    assert R.normalize(total, lengths, "sum").tolist() == [-4.0, -3.0]
    with pytest.raises(ValueError):
        R.normalize(total, lengths, "max")


def test_token_count_against_the_limit():
    assert R.tokens_processed(100, [3, 4], shared=True) == 100 + 2 + 3
    assert R.tokens_processed(100, [3, 4], shared=False) == 200 + 2 + 3


def test_yes_no_scores_equal_separate_forwards(model):
    prompt, suffixes = _case(1, n=7)
    got = R.yes_no_scores(model, prompt, suffixes, 3, 4)
    with torch.no_grad():
        for g, s in zip(got, suffixes, strict=True):
            last = model(input_ids=torch.tensor([prompt + s])).logits[0, -1]
            assert g == pytest.approx(float(last[3] - last[4]), abs=1e-4)


def test_yes_no_batch_equals_one_request_at_a_time(model):
    """Several users' packed rows in one forward (right-padded, prompts longer than
    gemma3()'s window) give each user's own scores."""
    reqs = [(p[:n], s) for (p, s), n in zip([_case(k, n=m) for k, m in ((3, 5), (4, 9), (5, 2))],
                                             (120, 40, 90), strict=True)]
    got = R.yes_no_scores_batch(model, reqs, 3, 4)
    assert [len(g) for g in got] == [5, 9, 2]
    for g, (prefix, suffixes) in zip(got, reqs, strict=True):
        np.testing.assert_allclose(g, R.yes_no_scores(model, prefix, suffixes, 3, 4), atol=1e-4)


def test_greedy_decode_matches_stepwise_argmax(model):
    prompt, _ = _case(2)
    got = R.greedy_decode(model, prompt, 6, eos=-1)
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(6):
            seq.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    assert got == seq[len(prompt):]
    eos = got[2]
    assert R.greedy_decode(model, prompt, 6, eos=eos) == got[:got.index(eos)]


def test_parse_answer():
    titles = ["Star Wars", "Star Wars II", "Alien", "Heat"]
    assert R.parse_answer("Alien", titles) == 2
    assert R.parse_answer("  star   WARS \n more text", titles) == 0  # first line, normalized
    assert R.parse_answer("I pick Star Wars II tonight", titles) == 1  # longest contained
    assert R.parse_answer("Terminator", titles) is None
    assert R.parse_answer("", titles) is None


def test_generate_mode_counts_invalid_answers_as_misses():
    titles = ["Star Wars", "Alien", "Heat"]
    parsed = [R.parse_answer(t, titles) for t in ("Alien", "Blade Runner", "Heat", "")]
    assert parsed == [1, None, 2, None]
    hits = R.generate_hits(parsed, [1, 1, 0, 2])
    assert hits.tolist() == [1.0, 0.0, 0.0, 0.0]  # invalid answers are misses
    scores = R.generate_scores(parsed, 3)
    assert scores[0].tolist() == [0, 1, 0] and scores[2].tolist() == [0, 0, 1]
    assert np.isnan(scores[1]).all() and np.isnan(scores[3]).all()  # abstentions
    # the table's metrics agree with the paper's count: an invalid answer is a miss,
    # not the random expectation a row of equal scores would get
    ndcg1 = M.ndcg_at_k(scores, np.array([1, 1, 0, 2]), 1)
    assert ndcg1.tolist() == hits.tolist()
