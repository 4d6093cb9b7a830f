"""RecLoRA end to end on toy data with micro settings: the contract, what it selects and
caches, gates per user, where gradients go, and a retrieval that never reads a label."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baselines.sasrec import SASRec
from bench import profiles, registry
from bench.api import ScoreRequest
from bench.testing import check_system
from molorec import reclora as RL
from molorec.profiles import PROFILES, RECLORA
from molorec.reclora import RecLoRA, retrieve, split_shared
from molorec.testing import reclora_micro_config, synthetic
from molorec.train_loop import TrainSettings, answer_loss_sum, collate, train


@pytest.fixture(scope="module")
def domain():
    return synthetic()


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, domain):
    """The contract check (two instances, the second loading every artifact); returns the
    first instance and the shared workdir."""
    data, valid, test, _ = domain
    work = str(tmp_path_factory.mktemp("reclora"))
    checked = check_system(RecLoRA, config=reclora_micro_config(), domain=(data, valid, test),
                           workdir=work)
    return checked.system, work


def test_it_keeps_the_contract_and_reports_its_choices(fitted):
    system, _ = fitted
    info = system.describe()
    assert RecLoRA.group == "LLM-Based"
    assert info["n_loras"] == 2 and info["temperature"] == 10 and info["history"] in RL.HISTORIES
    assert set(info["valid_by_setting"]) == {"T=10 history=recent", "T=10 history=retrieval"}
    assert info["valid_ndcg@1"] == max(info["valid_by_setting"].values())
    assert info["recommender"]["system"] == "SASRec" and info["recommender"]["epochs_run"] == 1
    assert all(t["examples"] == 48 for t in info["training"].values())  # 24 users x yes/no
    gates = info["test_gates"]
    assert sum(gates["mean"]) == pytest.approx(1, abs=1e-3)
    assert "per-user mixture of 2 LoRAs" in info["caption_note"]


def test_gates_sum_to_one_and_differ_across_users(fitted, domain):
    system, _ = fitted
    g = system._gates([r.history for r in domain[2]]).numpy()
    assert g.shape == (24, 2) and (g > 0).all()
    np.testing.assert_allclose(g.sum(1), 1, atol=1e-6)
    assert (g.std(0) > 1e-4).all()
    assert len({tuple(np.round(row, 6)) for row in g}) == len(g)  # no two users alike


def test_gradients_reach_the_router_and_the_loras_only(fitted, domain):
    system, _ = fitted
    saved_bank = system.bank.tensors()
    saved_router = {k: v.clone() for k, v in system.router.state_dict().items()}
    backbone = {k: v.clone() for k, v in system.model.state_dict().items() if "lora_" not in k}
    rec = {k: v.clone() for k, v in system.rec.model.state_dict().items()}
    try:
        examples, vectors, _ = system.examples(domain[0], "recent")
        h = torch.from_numpy(vectors)
        micro = examples[:8]
        system.router.train()
        with system.bank.gated(system.router(h[[e.row for e in micro]], 10.0)):
            answer_loss_sum(system.model, collate(micro, system.pad, "cpu")).backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0
                   for p in [*system.router.parameters(), *system.bank.parameters()])
        frozen = [p for n, p in system.model.named_parameters() if "lora_" not in n]
        assert frozen and all(p.grad is None and not p.requires_grad for p in frozen)
        assert all(p.grad is None for p in system.rec.model.parameters())
        # one step of the training loop moves the router and the LoRAs, nothing else
        system.router.zero_grad()
        train(system.model, examples[:8], TrainSettings(1, 1e-2, 8, 8), 0, system.pad,
              extra_params=list(system.router.parameters()),
              around=lambda c: system.bank.gated(system.router(h[[e.row for e in c]], 10.0)))
        assert all(not torch.equal(v, system.router.state_dict()[k])
                   for k, v in saved_router.items())
        assert all(not torch.equal(v, saved_bank[k]) for k, v in system.bank.tensors().items())
        now = system.model.state_dict()
        assert all(torch.equal(v, now[k]) for k, v in backbone.items())
        assert all(torch.equal(v, system.rec.model.state_dict()[k]) for k, v in rec.items())
    finally:
        system.bank.load(saved_bank)
        system.router.load_state_dict(saved_router)
        system.router.eval()


def test_the_recent_variant_trains_on_tallrecs_examples(fitted, domain):
    """Same targets, negatives and prompts as TALLRec when the prompt histories agree:
    the two rows then differ by the adapter only."""
    from molorec.instructions import yes_no_examples

    system, _ = fitted
    data = domain[0]
    kept = system.rc["short_history"]
    system.rc["short_history"] = system.prompting.max_history
    try:
        mine, _, _ = system.examples(data, "recent")
    finally:
        system.rc["short_history"] = kept
    theirs = yes_no_examples(data.train, data.titles, system.enc, seed=system.seed,
                             max_len=system.prompting.max_len,
                             max_history=system.prompting.max_history,
                             max_targets_per_user=1, negatives_per_target=1)
    assert [(e.prompt, e.answer) for e in mine] == [(e.prompt, e.answer) for e in theirs]


def test_retrieve_picks_the_closest_history_items_in_history_order():
    vec = {k: np.array(v, dtype=np.float32) / np.linalg.norm(v) for k, v in {
        "a": [1, 0], "b": [0, 1], "c": [1, 1], "d": [1, 0.1], "x": [1, 0.05],
        "e": [1, 0]}.items()}
    assert retrieve(["a", "b", "c", "d"], "x", vec, 2) == ["a", "d"]
    assert retrieve(["a", "b", "e"], "x", vec, 1) == ["e"]  # a tie: the more recent
    assert retrieve(["b", "c"], "x", vec, 5) == ["b", "c"]


def test_the_retrieval_variant_never_reads_the_label(fitted, domain):
    """Training: each example's history is retrieved for its own candidate, from the
    items before the target only, whether its answer is Yes or No. Scoring: a candidate's
    score depends on the history and itself only (there is no label to read)."""
    system, _ = fitted
    data = domain[0]
    examples, _, _ = system.examples(data, "retrieval")
    long = system.rc["long_history"]
    different = 0
    for e in examples:
        seq = data.train[e.row]  # one target per user: the last one
        past, target = seq.items[:-1], seq.items[-1]
        assert e.prompt == system._prompt_for(past, e.item, "retrieval")
        picked = retrieve(past[-long:], e.item, system.vectors, system.rc["short_history"])
        assert set(picked) <= set(past) and target not in picked
        different += picked != retrieve(past[-long:], target, system.vectors,
                                        system.rc["short_history"])
    assert different > 0  # a negative's history is its own, not the positive's
    kept = system.history
    system.history = "retrieval"
    try:
        reqs = list(domain[2][:4])
        base = system.score(reqs)
        flipped = [ScoreRequest(r.user, r.history, r.candidates[::-1]) for r in reqs]
        np.testing.assert_allclose(system.score(flipped), base[:, ::-1], atol=1e-5)
        cut = [ScoreRequest(r.user, r.history, r.candidates[:7]) for r in reqs]
        np.testing.assert_allclose(system.score(cut), base[:, :7], atol=1e-5)
    finally:
        system.history = kept


def test_split_shared_keeps_a_token_per_prompt():
    prefix, rest = split_shared([(1, 2, 3, 4), (1, 2, 5), (1, 2, 3, 6)])
    assert prefix == (1, 2) and rest == [(3, 4), (5,), (3, 6)]
    prefix, rest = split_shared([(1, 2), (1, 2)])
    assert prefix == (1,) and rest == [(2,), (2,)]


def test_a_second_fit_loads_everything(fitted, domain, monkeypatch):
    _, work = fitted

    def refuse(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(RL, "train", refuse)
    monkeypatch.setattr(SASRec, "fit", refuse)
    again = RecLoRA(reclora_micro_config(), 0, work)
    again.fit(domain[0], domain[1])
    assert again.describe()["valid_by_setting"] == fitted[0].describe()["valid_by_setting"]


@pytest.mark.parametrize("backend", ["vllm", "auto"])
def test_a_backend_that_serves_one_adapter_is_refused(tmp_path, backend):
    with pytest.raises(ValueError, match="mixed per user.*set ranking.backend: hf"):
        RecLoRA(reclora_micro_config(ranking={"backend": backend}), 0, str(tmp_path))


def test_profiles_share_the_backbone_and_spell_out_sasrec():
    for prof in ("smoke", "cpu", "paper"):
        cfg = RecLoRA.config_for(prof)
        for part in ("backbone", "prompt"):
            assert cfg[part] == PROFILES["tallrec"][prof][part]  # one backbone artifact
        assert cfg["ranking"].get("backend", "hf") == "hf"
        rec = cfg["recommender"]
        assert rec["system"] == "SASRec"
        own = SASRec.config_for(prof)
        differs = {k for k in own if own[k] != rec["config"].get(k)}
        assert differs == {"smoke": set(), "cpu": {"epochs", "patience"},
                           "paper": {"max_len"}}[prof]
        assert cfg["reclora"]["long_history"] == rec["config"]["max_len"]
    assert RECLORA["paper"]["reclora"]["n_loras"] == 16
    assert RECLORA["paper"]["reclora"]["temperature"] == [5, 10, 15]
    names = list(registry.BUILTIN)
    assert names.index("RecLoRA") == names.index("TALLRec") + 1
    assert "RecLoRA" in profiles.DEFAULT_SYSTEMS
