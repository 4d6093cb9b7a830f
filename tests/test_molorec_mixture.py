"""Mixture of LoRA: matches peft, merged == unmerged, entropy steps touch theta only."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from molorec.adapters import Adapter, extract
from molorec.mixture import Mixture, answer_entropy, learn_entropy


def _base():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=200, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=1, num_key_value_heads=1,
                      head_dim=64, max_position_embeddings=256, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(cfg).eval()
    model.requires_grad_(False)
    return model


def _random_adapter(model, name: str, seed: int, r: int = 4) -> Adapter:
    """A peft LoRA with non-zero B (peft initializes B to zero), extracted."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(
        r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules="all-linear"),
        adapter_name=name)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    return extract(peft_model, name), peft_model


X = torch.tensor([[5, 17, 33, 2, 99, 150, 7, 8, 64, 12]])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=X).logits


def test_single_adapter_equals_peft():
    base = _base()
    adapter, peft_model = _random_adapter(base, "one", 1)
    assert len(adapter.weights) == 2 * 7  # q,k,v,o,gate,up,down in 2 layers
    assert adapter.scaling == pytest.approx(2.0)
    want = _logits(peft_model.eval())
    model = copy.deepcopy(base)
    mix = Mixture(model, [adapter])
    assert not torch.allclose(want, _logits(base), atol=1e-3)  # the adapter matters
    torch.testing.assert_close(_logits(model), want, atol=1e-4, rtol=1e-4)
    mix.merge()
    torch.testing.assert_close(_logits(model), want, atol=1e-4, rtol=1e-4)


def test_merged_mixture_gives_the_same_outputs_as_unmerged():
    base = _base()
    a, _ = _random_adapter(base, "general", 1)
    b, _ = _random_adapter(base, "specific", 2)
    model = copy.deepcopy(base)
    mix = Mixture(model, [a, b])
    torch.manual_seed(5)
    with torch.no_grad():
        for theta in mix.thetas():  # different weights in every layer
            theta.normal_(0, 1.0)
    unmerged = _logits(model)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    mix.merge()
    assert mix.merged
    torch.testing.assert_close(_logits(model), unmerged, atol=1e-4, rtol=1e-4)
    # merged inference is a plain model: every adapted layer is one matmul with W + delta
    layer = next(iter(mix.layers.values()))
    assert not torch.equal(layer.base.weight, original[_key(mix, layer)])
    mix.unmerge()
    torch.testing.assert_close(_logits(model), unmerged, atol=1e-5, rtol=1e-5)
    for name, layer in mix.layers.items():
        torch.testing.assert_close(layer.base.weight, original[name + ".weight"],
                                   atol=1e-6, rtol=0)
    with pytest.raises(RuntimeError):
        mix.unmerge()


def _key(mix, layer) -> str:
    return next(n for n, m in mix.layers.items() if m is layer) + ".weight"


def test_set_weights_and_summaries():
    base = _base()
    a, _ = _random_adapter(base, "general", 1)
    b, _ = _random_adapter(base, "specific", 2)
    mix = Mixture(copy.deepcopy(base), [a, b])
    mix.set_weights([0.3, 0.7])
    for w in mix.weights_by_layer().values():
        assert w == pytest.approx([0.3, 0.7], abs=1e-4)
    assert set(mix.weights_by_block()) == {"layer 0", "layer 1"}
    with pytest.raises(ValueError):
        mix.set_weights([1.0])
    with pytest.raises(ValueError):
        Mixture(copy.deepcopy(base), [a, a])


def test_an_entropy_step_changes_theta_and_nothing_else():
    base = _base()
    a, _ = _random_adapter(base, "general", 1)
    b, _ = _random_adapter(base, "specific", 2)
    model = copy.deepcopy(base)
    mix = Mixture(model, [a, b])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prompts = [[1, 2, 3, 4, 5], [9, 8, 7, 6, 5, 4, 3], [11, 12]]
    ent0 = float(answer_entropy(model, prompts, 3, eos=0)[0].detach())
    hist = learn_entropy(mix, prompts, k=3, lr=0.5, epochs=1, batch_size=3, eos=0, seed=0)
    assert len(hist) == 1 and hist[0] == pytest.approx(ent0 / 9, rel=1e-4)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(".theta") for k in changed)
    assert len(changed) == len(mix.layers)  # every layer's theta moved
    assert all(p.grad is None or not p.requires_grad for n, p in model.named_parameters()
               if not n.endswith("theta"))


def test_entropy_learning_lowers_entropy():
    base = _base()
    a, _ = _random_adapter(base, "general", 1)
    b, _ = _random_adapter(base, "specific", 2)
    mix = Mixture(copy.deepcopy(base), [a, b])
    prompts = [list(np.random.default_rng(s).integers(1, 200, 12)) for s in range(6)]
    hist = learn_entropy(mix, prompts, k=3, lr=0.3, epochs=8, batch_size=6, eos=0, seed=0)
    assert hist[-1] < hist[0]
    mix.merge()
    with pytest.raises(RuntimeError):
        learn_entropy(mix, prompts, k=3, lr=0.3, epochs=1, batch_size=6, eos=0, seed=0)


def _record_starts(monkeypatch, mix: Mixture) -> list:
    """Theta before every optimizer step (one step per epoch here: each epoch's start)."""
    starts: list = []
    real_step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        starts.append([t.detach().clone() for t in mix.thetas()])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    return starts


def test_the_stopping_rule_keeps_the_lowest_entropy_theta(monkeypatch):
    """With a step far too large the entropy rises again; the label-free stopping rule
    stops there, scores the theta after the last step too, and returns theta as it was
    at the start of the lowest-entropy epoch (here one the steps overshot)."""
    base = _base()
    a, _ = _random_adapter(base, "general", 1)
    b, _ = _random_adapter(base, "specific", 2)
    prompts = [list(np.random.default_rng(s).integers(1, 200, 12)) for s in range(6)]
    free = Mixture(copy.deepcopy(base), [a, b])
    hist = learn_entropy(free, prompts, k=3, lr=5.0, epochs=6, batch_size=6, eos=0, seed=0)
    rises = [j for j in range(1, len(hist)) if hist[j] > hist[j - 1]]
    assert rises, hist  # this step size overshoots: the test needs a rise to stop at

    stopped = Mixture(copy.deepcopy(base), [a, b])
    thetas = _record_starts(monkeypatch, stopped)
    short = learn_entropy(stopped, prompts, k=3, lr=5.0, epochs=6, batch_size=6, eos=0,
                          seed=0, stop_on_rise=True)
    assert short[:-1] == hist[:rises[0] + 1]  # same trajectory, cut at the first rise
    best = int(np.argmin(short))
    assert best < len(short) - 1  # an epoch's start, not the overshooting last step
    for got, want in zip(stopped.thetas(), thetas[best], strict=True):
        assert torch.equal(got.detach(), want)


def test_the_stopping_rule_keeps_the_last_step_when_it_is_best(monkeypatch):
    """With a small step the entropy falls in every epoch: the theta after the last step
    has the lowest entropy and is the one kept (the rule used to restore the theta some
    epoch started from, so the last step never survived; issue 28)."""
    from molorec.mixture import mean_entropy

    base = _base()
    a, _ = _random_adapter(base, "general", 1)
    b, _ = _random_adapter(base, "specific", 2)
    prompts = [list(np.random.default_rng(s).integers(1, 200, 12)) for s in range(6)]
    mix = Mixture(copy.deepcopy(base), [a, b])
    starts = _record_starts(monkeypatch, mix)
    hist = learn_entropy(mix, prompts, k=3, lr=0.3, epochs=3, batch_size=6, eos=0, seed=0,
                         stop_on_rise=True)
    # 3 epochs, then the theta after the last step, scored: the lowest
    assert len(hist) == 4 and int(np.argmin(hist)) == 3, hist
    assert mean_entropy(mix, prompts, k=3, eos=0, batch_size=6) == pytest.approx(hist[-1])
    assert not all(torch.equal(t.detach(), s) for t, s in zip(mix.thetas(), starts[-1],
                                                              strict=True))
