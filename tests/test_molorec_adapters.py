"""Adapters on disk are PEFT directories; the mixture is one exact concatenated LoRA;
the HF backend serves an adapter exactly and switches back without drift; training loss
and entropy use the model's own forward (soft-capping included)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from molorec import adapters as A
from molorec.backbone import Backbone
from molorec.backends import AnswerRequest, backend_class
from molorec.mixture import Mixture, answer_entropy
from molorec.train_loop import answer_loss_sum, collate
from tests.models import gemma3, qwen2

X = torch.tensor([[5, 17, 33, 2, 99, 150, 7, 8, 64, 12]])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=X).logits


def _random_peft(model, name: str, seed: int, r: int = 4):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(
        r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules="all-linear"),
        adapter_name=name)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    return peft_model


def test_saved_adapters_load_in_peft_with_the_same_outputs(tmp_path):
    from peft import PeftModel

    base = qwen2(200)
    trained = _random_peft(base, "specific", 1).eval()
    adapter = A.extract(trained, "specific")
    A.save_peft(adapter, tmp_path / "a", "some/base", {"losses": [1.0]})
    assert {p.name for p in (tmp_path / "a").iterdir()} == {
        "adapter_config.json", "adapter_model.safetensors", "molorec.json"}
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "a").eval()
    torch.testing.assert_close(_logits(loaded), _logits(trained), atol=1e-5, rtol=1e-5)
    back = A.load_peft(tmp_path / "a")
    assert back.name == "specific" and back.scaling == pytest.approx(2.0)
    assert set(back.weights) == set(adapter.weights)
    assert A.record(tmp_path / "a")["losses"] == [1.0]


def test_the_concatenated_adapter_equals_the_mixture(tmp_path):
    """w_g s_g B_g A_g + w_s s_s B_s A_s per layer is one LoRA of rank r_g + r_s."""
    from peft import PeftModel

    base = qwen2(200)
    g = A.extract(_random_peft(base, "general", 1, r=4), "general")
    s = A.extract(_random_peft(base, "specific", 2, r=6), "specific")
    mix = Mixture(copy.deepcopy(base), [g, s])
    torch.manual_seed(5)
    with torch.no_grad():
        for theta in mix.thetas():  # different weights in every layer
            theta.normal_(0, 1.0)
    want = _logits(mix.model)
    one = mix.as_adapter("molorec")
    assert one.rank == 10 and one.scaling == 1.0
    A.save_peft(one, tmp_path / "mix", "some/base")
    served = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "mix").eval()
    torch.testing.assert_close(_logits(served), want, atol=1e-5, rtol=1e-5)
    mix.remove()  # the plain model is back
    torch.testing.assert_close(_logits(mix.model), _logits(base), atol=0, rtol=0)


def _backend(tmp_path, model):
    from molorec.backbone import train_tokenizer

    path = tmp_path / "bb"
    model.save_pretrained(path)
    train_tokenizer(["a tiny corpus"], 260).save_pretrained(path)
    return backend_class("hf")(Backbone(str(path), "key", "Tiny", "float32", False, "float32"))


def test_hf_backend_serves_adapters_exactly_and_restores_the_backbone(tmp_path):
    base = qwen2(200)
    trained = _random_peft(base, "first", 1).eval()
    A.save_peft(A.extract(trained, "first"), tmp_path / "a", "x")
    other = _random_peft(base, "second", 2).eval()
    A.save_peft(A.extract(other, "second"), tmp_path / "b", "x")
    be = _backend(tmp_path, base)
    bare = _logits(be.model)
    be.set_adapter(tmp_path / "a")
    torch.testing.assert_close(_logits(be.model), _logits(trained), atol=1e-4, rtol=1e-4)
    be.set_adapter(tmp_path / "b")  # switching restores W exactly before merging
    torch.testing.assert_close(_logits(be.model), _logits(other), atol=1e-4, rtol=1e-4)
    be.set_adapter(None)
    assert torch.equal(_logits(be.model), bare)
    req = AnswerRequest(tuple(range(3, 40)), ((5, 6), (7,)))
    (got,) = be.answer_logprobs([req])
    assert got.shape == (2,) and np.isfinite(got).all()
    assert be.describe()["compute"] == "float32"


@pytest.mark.parametrize("make", [qwen2, gemma3], ids=["qwen2", "gemma3"])
def test_training_loss_is_the_models_own(make):
    """Answer-only logits give the loss transformers computes from full logits."""
    from molorec.instructions import Example

    model = make()
    rng = np.random.default_rng(0)
    examples = [Example(tuple(rng.integers(1, 300, 40).tolist()),
                        tuple(rng.integers(1, 300, int(n)).tolist())) for n in (3, 5, 1)]
    batch = collate(examples, 0, "cpu")
    with torch.no_grad():
        ours = answer_loss_sum(model, batch) / sum(len(e.answer) for e in examples)
        theirs = model(**batch).loss
    assert float(ours) == pytest.approx(float(theirs), abs=1e-5)


def test_entropy_uses_the_models_own_logits():
    model = gemma3(softcap=2.0)  # a strong cap: skipping it changes the entropy a lot
    prompts = [list(range(3, 40)), list(range(50, 70))]
    total, count = answer_entropy(model, prompts, k=2, eos=-1)
    want = []
    with torch.no_grad():
        for p in prompts:
            seq = list(p)
            for _ in range(2):
                logits = model(input_ids=torch.tensor([seq])).logits[0, -1]
                logp = torch.log_softmax(logits.float(), -1)
                want.append(float(-(logp.exp() * logp).sum()))
                seq.append(int(logits.argmax()))
    assert count == 4 and float(total.detach()) == pytest.approx(sum(want), abs=1e-4)
