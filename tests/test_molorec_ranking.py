"""Ranking: shared-prefix scoring equals naive scoring; generate-mode parsing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from molorec import ranking as R
from protocols import metrics as M


@pytest.fixture(scope="module")
def model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=1, num_key_value_heads=1,
                      head_dim=64, max_position_embeddings=512, tie_word_embeddings=True)
    return Qwen2ForCausalLM(cfg).eval()


def _case(seed=0, n=30):
    rng = np.random.default_rng(seed)
    prompt = rng.integers(1, 300, size=120).tolist()
    answers = [rng.integers(1, 300, size=int(rng.integers(1, 9))).tolist() for _ in range(n)]
    return prompt, answers


@pytest.mark.parametrize("sharing", R.KV_SHARING)
def test_shared_prefix_scores_equal_naive(model, sharing):
    prompt, answers = _case()
    shared, lengths = R.answer_logprobs(model, prompt, answers, sharing)
    naive, lengths2 = R.answer_logprobs_naive(model, prompt, answers)
    np.testing.assert_allclose(shared, naive, atol=1e-4)
    assert (lengths == lengths2).all() and (lengths == [len(a) for a in answers]).all()
    assert np.isfinite(shared).all() and (shared < 0).all()


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
