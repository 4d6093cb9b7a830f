"""RecLoRA's gated LoRA bank: one LoRA is peft's LoRA, gates mix exactly as MoLoRec's
mixture layer does, users batched with their own gates score as one by one, the router's
gates are distributions that differ across users."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from molorec import ranking as R
from molorec.adapters import Adapter
from molorec.gated import GatedBank, Router
from molorec.mixture import Mixture
from tests.models import ARCHITECTURES

X = torch.tensor([[5, 17, 33, 2, 99, 150, 7, 8, 64, 12, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49],
                  [9, 1, 3, 250, 4, 8, 15, 16, 23, 42, 108, 7, 7, 7, 1, 2, 3, 4, 5, 6]])


@pytest.fixture(params=sorted(ARCHITECTURES))
def base(request):
    model = ARCHITECTURES[request.param]()
    model.requires_grad_(False)
    return model


def _randomize(bank: GatedBank, seed: int = 1) -> None:
    """Non-zero B (a fresh bank, like peft, starts at B = 0: no effect)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in bank.layers.values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.3)


def _logits(model, gates=None, bank=None) -> torch.Tensor:
    with torch.no_grad():
        if bank is None:
            return model(input_ids=X).logits
        with bank.gated(gates):
            return model(input_ids=X).logits


def test_one_lora_is_a_plain_peft_lora(base):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    want = _logits(peft_model.eval())
    assert not torch.allclose(want, _logits(base), atol=1e-3)  # the LoRA matters
    model = copy.deepcopy(base)
    bank = GatedBank(model, n=1, r=4, alpha=8)
    assert len(bank.layers) == 2 * len(model.model.layers)  # q and v of every layer
    peft_weights = dict(peft_model.named_parameters())
    with torch.no_grad():
        for mod, layer in bank.layers.items():
            for ab in ("A", "B"):
                layer.__getattr__(f"lora_{ab}").copy_(
                    peft_weights[f"base_model.model.{mod}.lora_{ab}.default.weight"])
    torch.testing.assert_close(_logits(model, torch.ones(2, 1), bank), want, atol=1e-6,
                               rtol=1e-6)
    router = Router(16, 1)  # whatever the user, one LoRA gets gate 1
    gates = router(torch.randn(2, 16), temperature=10.0)
    assert torch.equal(gates, torch.ones(2, 1))
    bank.remove()
    torch.testing.assert_close(_logits(model), _logits(base), atol=0, rtol=0)


def test_gates_mix_like_the_mixture_layer(base):
    """Per row, sum_k g_k s B_k A_k: MoLoRec's MixtureLinear with the same weights."""
    model = copy.deepcopy(base)
    bank = GatedBank(model, n=3, r=4, alpha=8)
    _randomize(bank)
    gates = torch.tensor([[0.2, 0.5, 0.3], [0.7, 0.1, 0.2]])
    got = _logits(model, gates, bank)
    for row in range(2):
        ref = copy.deepcopy(base)
        adapters = [Adapter(f"lora{k}", 2.0, {m: (layer.lora_A[4 * k:4 * k + 4].detach(),
                                                    layer.lora_B[:, 4 * k:4 * k + 4].detach())
                                                for m, layer in bank.layers.items()})
                    for k in range(3)]
        Mixture(ref, adapters).set_weights(gates[row].tolist())
        torch.testing.assert_close(got[row], _logits(ref)[row], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got[0], _logits(model, gates[[1, 0]], bank)[1], atol=1e-4)


def test_users_batched_with_their_own_gates_score_as_one_by_one(base):
    """RecLoRA's serving: several users' packed yes/no rows in one forward, each row with
    its user's gates, equal to each user alone and to a plain forward per candidate."""
    model = copy.deepcopy(base)
    bank = GatedBank(model, n=3, r=4, alpha=8)
    _randomize(bank, 2)
    rng = np.random.default_rng(0)
    reqs = [(rng.integers(1, 300, size=n).tolist(),
             [rng.integers(1, 300, size=int(rng.integers(1, 6))).tolist() for _ in range(m)])
            for n, m in ((70, 6), (25, 4), (50, 7))]  # prompts longer than gemma3's window
    gates = torch.softmax(torch.tensor(rng.normal(size=(3, 3)) * 2, dtype=torch.float32), -1)
    with bank.gated(gates):
        batched = R.yes_no_scores_batch(model, reqs, 3, 4)
    for b, (prefix, suffixes) in enumerate(reqs):
        with bank.gated(gates[b:b + 1]):
            alone = R.yes_no_scores(model, prefix, suffixes, 3, 4)
            with torch.no_grad():
                naive = [model(input_ids=torch.tensor([prefix + s])).logits[0, -1]
                         for s in suffixes]
        np.testing.assert_allclose(batched[b], alone, atol=1e-4)
        np.testing.assert_allclose(alone, [float(x[3] - x[4]) for x in naive], atol=1e-4)
    with bank.gated(gates[[1, 0, 2]]):  # the gates do matter per row
        swapped = R.yes_no_scores_batch(model, reqs, 3, 4)
    assert not np.allclose(swapped[0], batched[0], atol=1e-3)


def test_a_forward_without_gates_or_with_the_wrong_batch_is_refused():
    model = ARCHITECTURES["qwen2"]()
    bank = GatedBank(model, n=2, r=4, alpha=8)
    with pytest.raises(RuntimeError, match="without gates"):
        model(input_ids=X)
    with pytest.raises(ValueError, match="gates of shape"), bank.gated(torch.ones(3, 2) / 2):
        model(input_ids=X)
    with pytest.raises(ValueError, match="no linear layer"):
        GatedBank(model, n=2, r=4, alpha=8, target_modules=("nothing",))


def test_router_gates_are_distributions_that_differ_across_users():
    torch.manual_seed(0)
    router = Router(16, 4).eval()
    h = torch.randn(5, 16)
    for t in (1.0, 10.0):
        g = router(h, t)
        assert g.shape == (5, 4) and (g > 0).all()
        torch.testing.assert_close(g.sum(-1), torch.ones(5))
        assert (g.std(0) > 1e-4).all()  # every LoRA's weight varies across users
    sharp, flat = router(h, 1.0), router(h, 10.0)
    entropy = lambda g: -(g * g.log()).sum(-1)  # noqa: E731
    assert (entropy(flat) > entropy(sharp)).all()  # a higher T mixes more evenly
