"""Scores that enter a ranking come from float32 logits whatever the model's dtype: on a
bf16 backbone TALLRec's and RecLoRA's logit(Yes) - logit(No) keep as many distinct
values per user as on fp32 (bf16 logits near 20 are multiples of 0.125, so 30 close
scores collapsed into one), and rank the candidates as fp32 does within bf16's noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from molorec import lm
from molorec import ranking as R
from tests.models import qwen2

YES, NO = 5, 7
RNG = np.random.default_rng(0)
PREFIX = RNG.integers(10, 300, 60).tolist()
TAIL = RNG.integers(10, 300, 12).tolist()
# 30 candidates that differ in one early token: close scores, as a trained model gives
SUFFIXES = [[int(c), *TAIL] for c in RNG.choice(np.arange(10, 300), 30, replace=False)]


def _confident(dtype: torch.dtype):
    """The tiny Qwen2 with Yes and No both likely (logits about 20) and their difference
    small: the regime of a fine-tuned yes/no model."""
    model = qwen2()
    with torch.no_grad():
        h = model(input_ids=torch.tensor([PREFIX + SUFFIXES[0]]),
                  output_hidden_states=True).hidden_states[-1][0, -1]
        w = model.get_output_embeddings().weight
        for t in (YES, NO):
            w[t] += 20 * h / h.norm() ** 2
    return model.to(dtype)


@pytest.fixture(scope="module")
def models():
    return _confident(torch.float32), _confident(torch.bfloat16)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_yes_no_scores_on_bf16_keep_fp32_resolution(models):
    m32, m16 = models
    with torch.no_grad():
        logits = m16(input_ids=torch.tensor([PREFIX + SUFFIXES[0]])).logits[0, -1]
    assert float(logits[YES]) > 15  # where bf16's spacing is 0.125
    fp32 = R.yes_no_scores(m32, PREFIX, SUFFIXES, YES, NO)
    tallrec = R.yes_no_scores(m16, PREFIX, SUFFIXES, YES, NO)
    reclora = R.yes_no_scores_batch(m16, [(PREFIX, SUFFIXES), (PREFIX, SUFFIXES[:7])],
                                    YES, NO)
    assert np.ptp(fp32) < 0.1 and len(set(fp32.tolist())) >= 28  # close scores ...
    for scores in (tallrec, reclora[0]):
        assert len(set(scores.tolist())) >= len(set(fp32.tolist()))  # ... all kept
        assert _spearman(scores, fp32) > 0.9
        np.testing.assert_allclose(scores, fp32, atol=0.02)
    np.testing.assert_allclose(reclora[1], reclora[0][:7], atol=1e-5)


def _reference(model, prompt, answers) -> np.ndarray:
    """log p(answer | prompt) from the bf16 model's own hidden states, projected and
    normalized in float64."""
    out = []
    w = model.get_output_embeddings().weight.detach().double()
    for a in answers:
        with torch.no_grad():
            h = model(input_ids=torch.tensor([prompt + a]),
                      output_hidden_states=True).hidden_states[-1][0]
        logp = torch.log_softmax(h[len(prompt) - 1:-1].double() @ w.T, -1)
        out.append(float(logp.gather(-1, torch.tensor(a)[:, None]).sum()))
    return np.array(out)


@pytest.mark.parametrize("sharing", R.KV_SHARING)
def test_title_likelihoods_on_bf16_are_computed_in_float32(models, sharing):
    m16 = models[1]
    answers = [s[:4] for s in SUFFIXES[:8]]
    got, _ = R.answer_logprobs(m16, PREFIX, answers, sharing)
    np.testing.assert_allclose(got, _reference(m16, PREFIX, answers), atol=2e-3)
    naive, _ = R.answer_logprobs_naive(m16, PREFIX, answers)
    np.testing.assert_allclose(naive, _reference(m16, PREFIX, answers), atol=1e-4)


def test_the_projection_is_float32_under_bf16_autocast():
    """The cpu profile's `compute: auto` is bf16 autocast on CPUs with native bf16: the
    scored rows are still projected in float32 there."""
    model = qwen2()
    ids = torch.tensor([PREFIX])
    rows = torch.tensor([10, 59])
    plain = model(input_ids=ids).logits[0, [10, 59]]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = lm.logits_at(model, rows, None, fp32=True, input_ids=ids)
        pair, _ = lm.logits_at(model, rows, torch.tensor([YES, NO]), fp32=True, input_ids=ids)
        old, _ = lm.logits_at(model, rows, None, input_ids=ids)
    assert got.dtype == pair.dtype == torch.float32 and old.dtype == torch.bfloat16
    np.testing.assert_allclose(pair.numpy(), got[:, [YES, NO]].numpy(), atol=1e-6)
    np.testing.assert_allclose(got.numpy(), plain.detach().numpy(), atol=0.1)


def test_the_float32_head_is_sliced_exactly(monkeypatch):
    model = qwen2().to(torch.bfloat16)
    ids, rows = torch.tensor([PREFIX]), torch.tensor([3, 30, 59])
    with torch.no_grad():
        whole, _ = lm.logits_at(model, rows, None, fp32=True, input_ids=ids)
        monkeypatch.setattr(lm, "FP32_CHUNK_BYTES", 4 * 64 * 7)  # 7 vocabulary rows a slice
        sliced, _ = lm.logits_at(model, rows, None, fp32=True, input_ids=ids)
    assert whole.shape == sliced.shape == (3, 300)
    assert torch.equal(whole, sliced)
