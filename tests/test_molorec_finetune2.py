"""The 2nd Finetune row: it starts from the general LoRA, keeps the contract, and measures
the invalid-answer rate in generate mode on unlabeled test prompts."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from bench import registry
from bench.testing import check_system
from molorec import lora as L
from molorec.adapters import load_peft
from molorec.finetune2 import RATE_LABEL, SecondFinetune
from molorec.testing import micro_config, synthetic


def config(lr: float = 3e-3, **check) -> dict:
    cfg = micro_config("molorec-g")
    cfg["finetune2"] = {**micro_config("molorec-s")["specific"],
                        "invalid_rate": {"n_prompts": 6, "max_new_tokens": 8, "before": True,
                                         **check}}
    cfg["finetune2"]["train"] = {**cfg["finetune2"]["train"], "lr": lr}
    return cfg


@pytest.fixture()
def train_calls(monkeypatch):
    calls: Counter = Counter()
    real = L.train_adapter

    def counting(*args, **kwargs):
        calls[args[5]] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(L, "train_adapter", counting)
    return calls


def test_it_is_registered_for_the_fewshot_table_only():
    from bench import profiles

    assert registry.resolve("2nd-finetune") is SecondFinetune
    assert profiles.get("cpu").systems_for("fewshot") == ("TALLRec", "2nd-Finetune",
                                                          "MoLoRec")
    assert "2nd-Finetune" not in profiles.get("cpu").systems_for("warm")
    for prof in ("smoke", "cpu", "paper"):  # the specific module's budget
        cfg = SecondFinetune.config_for(prof)
        assert cfg["finetune2"]["train"] == registry.resolve("MoLoRec-S").config_for(
            prof)["specific"]["train"]
        assert cfg["finetune2"]["invalid_rate"]["list_candidates"] is True


def test_second_round_starts_from_the_general_lora(tmp_path, train_calls):
    data, valid, test, _ = synthetic()
    work = str(tmp_path)
    still = SecondFinetune(config(lr=0.0), 0, work)  # lr 0: training changes nothing
    arts = still.train_artifacts(data)
    general = load_peft(arts["general"])
    same = load_peft(next(iter(arts["finetune2"].values())))
    assert set(same.weights) == set(general.weights)
    for mod, (a, b) in general.weights.items():
        assert torch.equal(same.weights[mod][0], a) and torch.equal(same.weights[mod][1], b)

    moved = SecondFinetune(config(lr=3e-3), 0, work)
    arts = moved.train_artifacts(data)
    trained = load_peft(next(iter(arts["finetune2"].values())))
    assert any(not torch.equal(trained.weights[m][1], b) for m, (_, b) in
               general.weights.items())
    assert train_calls == {"general": 1, "finetune2": 2}  # the general LoRA is reused


def test_contract_and_invalid_answer_rate(tmp_path):
    data, valid, test, _ = synthetic()
    checked = check_system(SecondFinetune, config=config(), domain=(data, valid, test),
                           workdir=str(tmp_path))
    info = checked.system.describe()
    assert np.isfinite(checked.scores).all()  # ranks in score mode: no abstention
    check = info["invalid_check"]
    assert check["prompts"] == 6 and 0 <= check["invalid_rate"] <= 1
    assert info["rates"] == {RATE_LABEL: check["invalid_rate"]}
    assert 0 <= check["general_lora"]["invalid_rate"] <= 1  # the adapter it started from
    note = info["caption_note"]
    assert isinstance(note, list) and RATE_LABEL in note[1]


def test_the_rate_counts_answers_naming_no_candidate(tmp_path, monkeypatch):
    """With the model's answers stubbed: every other answer names a candidate."""
    data, valid, test, _ = synthetic()
    system = SecondFinetune(config(before=False), 0, str(tmp_path))
    system.fit(data, valid)
    backend = system.backend
    enc = system.enc

    def generate(prompts, max_new, eos):
        out = []
        for n, _ in enumerate(prompts):
            req = asked[n]
            text = data.titles[req.candidates[3]] if n % 2 == 0 else "no idea at all"
            out.append(list(enc.ids(text)))
        return out

    asked = list(test[:6])
    monkeypatch.setattr(backend, "generate", generate)
    got = system.invalid_rate(asked, {"list_candidates": True})
    assert got["invalid_rate"] == 0.5
    assert got["examples"][1] == "no idea at all"
