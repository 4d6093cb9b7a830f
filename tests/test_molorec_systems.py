"""The LLM rows end to end on toy data with micro settings: contract, determinism,
artifact reuse (the general module is trained once for every target domain)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from bench.api import check_scores
from bench.testing import check_system
from molorec import lora as L
from molorec import systems as S
from molorec.testing import micro_config, synthetic


@pytest.fixture()
def train_calls(monkeypatch):
    calls: Counter = Counter()
    real = L.train_adapter

    def counting(backbone, examples, lora, settings, seed, name):
        calls[name] += 1
        return real(backbone, examples, lora, settings, seed, name)

    monkeypatch.setattr(L, "train_adapter", counting)
    return calls


@pytest.fixture(scope="module")
def shared_work(tmp_path_factory) -> str:
    """One workdir for the tests below: the backbone and adapters are built once."""
    return str(tmp_path_factory.mktemp("molorec-work"))


@pytest.mark.slow  # ~20 s alone, more on a loaded machine
def test_general_module_is_reused_for_a_second_target_domain(tmp_path, train_calls):
    a = synthetic(dataset="domain-a", seed=0)
    b = synthetic(dataset="domain-b", seed=1, offset=100)
    assert a[0].general == b[0].general and a[0].train != b[0].train
    work = str(tmp_path)
    g = S.MoLoRecG(micro_config("molorec-g"), 0, work)
    g.fit(a[0], a[1])
    assert np.isfinite(check_scores(g.score(a[2]), a[2], "MoLoRec-G")).all()
    assert train_calls == {"general": 1}
    general_dirs = list((tmp_path / "molorec" / "lora-general").iterdir())
    mtime = (general_dirs[0] / "adapter_model.safetensors").stat().st_mtime_ns

    m = S.MoLoRec(micro_config("molorec"), 0, work)
    m.train_artifacts(b[0])  # what `python -m molorec.train` does before a table run
    assert train_calls == {"general": 1, "specific": 1}
    m.fit(b[0], b[1])
    assert np.isfinite(check_scores(m.score(b[2]), b[2], "MoLoRec")).all()
    assert train_calls == {"general": 1, "specific": 1}  # general reused, not retrained
    assert list((tmp_path / "molorec" / "lora-general").iterdir()) == general_dirs
    assert (general_dirs[0] / "adapter_model.safetensors").stat().st_mtime_ns == mtime

    s = S.MoLoRecS(micro_config("molorec-s"), 0, work)  # shares MoLoRec's specific module
    s.fit(b[0], b[1])
    assert train_calls == {"general": 1, "specific": 1}
    assert len(list((tmp_path / "molorec" / "backbone").iterdir())) == 1

    s_a = S.MoLoRecS(micro_config("molorec-s"), 0, work)  # a new domain: a new plug-in
    s_a.fit(a[0], a[1])
    assert train_calls == {"general": 1, "specific": 2}


def test_molorec_entropy_mode_is_deterministic_and_described(shared_work):
    data, valid, test, _ = synthetic()
    runs = []
    for work in (shared_work, shared_work + "-other"):  # trained twice from scratch
        m = S.MoLoRec(micro_config("molorec"), 7, work)
        m.fit(data, valid)
        runs.append((m.score(test), m.describe()))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    info = runs[0][1]
    assert np.isfinite(check_scores(runs[0][0], test, "MoLoRec")).all()
    assert info["mixture_method"] == "entropy" and info["ranking_mode"] == "score"
    assert info["adapters_order"] == ["general", "specific"]
    layers = info["weights_by_layer"]
    assert len(layers) == 7 and all(sum(w) == pytest.approx(1, abs=1e-3)
                                     for w in layers.values())
    assert info["entropy_lr"] in [0.1] and "test_entropy" in info
    # theta was learned at test time (moved away from the 0.5/0.5 start)
    assert any(abs(w[0] - 0.5) > 1e-3 for w in layers.values())


def test_molorec_grid_and_fixed(shared_work):
    data, valid, test, _ = synthetic()
    m = S.MoLoRec(micro_config("molorec", mixture={"method": "grid"}), 0, shared_work)
    m.fit(data, valid)
    info = m.describe()
    assert set(info["grid_valid"]) == {"0", "0.5", "1"}
    assert info["valid_ndcg@1"] == max(info["grid_valid"].values())
    best = float(max(info["grid_valid"], key=lambda w: info["grid_valid"][w]))
    assert all(w == pytest.approx([best, 1 - best], abs=1e-6)
               for w in info["weights_by_layer"].values())
    assert np.isfinite(check_scores(m.score(test), test, "MoLoRec")).all()
    f = S.MoLoRec(micro_config("molorec", mixture={"method": "fixed", "fixed": [0.2, 0.8]}),
                  0, shared_work)
    f.fit(data, valid)
    assert all(w == pytest.approx([0.2, 0.8], abs=1e-3)
               for w in f.describe()["weights_by_layer"].values())
    with pytest.raises(ValueError, match="mixture method"):
        S.MoLoRec(micro_config("molorec", mixture={"method": "vote"}), 0,
                  shared_work).fit(data, valid)


def test_backbone_tallrec_and_generate_mode(shared_work):
    """The contract (bench.testing.check_system) for the zero-shot row, TALLRec, and a
    generate-mode row that may abstain."""
    data, valid, test, positives = synthetic()
    domain = (data, valid, test)
    bb = check_system(S.Backbone, config=micro_config("backbone"), domain=domain,
                      workdir=shared_work).system
    assert bb.label == "TinyQwen2" and S.Backbone.name == "Backbone"

    check_system(S.TALLRec, config=micro_config("tallrec"), domain=domain, workdir=shared_work)
    assert S.TALLRec.group == "LLM-Based" and S.MoLoRec.group == "Ours"

    checked = check_system(S.MoLoRecS, config=micro_config(
        "molorec-s", ranking={"mode": "generate", "max_new_tokens": 8}), domain=domain,
        workdir=shared_work)
    g, scores = checked.system, checked.scores
    invalid = np.isnan(scores).all(1)  # abstentions: rows naming no candidate
    assert set(np.unique(scores[~invalid])) <= {0.0, 1.0}
    assert (scores[~invalid].sum(1) == 1).all()
    assert not np.isnan(scores[~invalid]).any()
    info = g.describe()
    assert info["ranking_mode"] == "generate"
    assert info["invalid_rate"] == pytest.approx(invalid.mean())
