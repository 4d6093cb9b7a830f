"""Template and instruction data: candidates never cut, history cut oldest first,
negatives only from outside the user's items and never from evaluation candidates."""

from __future__ import annotations

import pytest

from molorec import template as T
from molorec.backbone import train_tokenizer
from molorec.instructions import rank_examples, yes_no_examples
from molorec.testing import synthetic, title


@pytest.fixture(scope="module")
def enc():
    texts = [title(i) + "\n" for i in range(80)] + list(T.template_texts()) * 5
    return T.Encoder(train_tokenizer(texts, 400))


def _text(enc, ids) -> str:
    return enc.tokenizer.decode(list(ids))


def test_template_hash_is_stable_and_tracks_the_text(monkeypatch):
    h = T.template_hash()
    assert h == T.template_hash() and len(h) == 64
    monkeypatch.setattr(T, "_TEXTS", T._TEXTS[:-1] + ("Nope",))
    assert T.template_hash() != h
    monkeypatch.setattr(T, "TEMPLATE_VERSION", "other")
    assert T.template_hash() != h


@pytest.mark.parametrize("extra", [0, 3, 60, 5000])
def test_no_prompt_loses_a_candidate(enc, extra):
    history = [title(i) for i in range(40)]
    cands = [title(40 + i) for i in range(30)]
    reserve = max(len(enc.answer(t)) for t in cands)
    fixed = len(T.rank_prompt(enc, [], cands, 10**6, reserve).ids) + reserve
    max_len = fixed + extra  # room for `extra` history tokens
    p = T.rank_prompt(enc, history, cands, max_len, reserve)
    text = _text(enc, p.ids)
    lines = text.split("\n")
    start = lines.index(T.CANDIDATES_HEAD.strip())
    assert lines[start + 1:start + 31] == cands  # all 30, in file order
    assert len(p.ids) + reserve <= max_len
    # history is cut from the oldest side: what is kept is the newest suffix
    kept = lines[lines.index(T.HISTORY_HEAD.strip()) + 1:start]
    assert kept == history[len(history) - p.n_history:]
    if p.n_history < 40:  # the budget is used up to less than one more title
        assert len(p.ids) + reserve > max_len - max(len(enc.line(t)) for t in history)
    assert p.n_history == {0: 0, 3: 0, 60: p.n_history, 5000: 40}[extra]
    assert extra != 60 or 0 < p.n_history < 40


def test_candidates_that_cannot_fit_are_an_error_not_a_cut(enc):
    cands = [title(i) for i in range(30)]
    with pytest.raises(T.PromptTooLong):
        T.rank_prompt(enc, [], cands, 100, 10)


def test_max_history_and_newline_titles(enc):
    cands = [title(40 + i) for i in range(30)]
    p = T.rank_prompt(enc, [title(i) for i in range(20)], cands, 4000, 10, max_history=3)
    assert p.n_history == 3
    with pytest.raises(ValueError, match="newline"):
        T.rank_prompt(enc, ["bad\ntitle"], cands, 4000, 10)


def test_yes_no_parts_share_a_prefix_and_fit(enc):
    history = [title(i) for i in range(40)]
    cands = [title(40 + i) for i in range(30)]
    prefix, suffixes, n = T.yes_no_parts(enc, history, cands, 150)
    assert len(suffixes) == 30 and 0 < n < 40
    assert all(len(prefix) + len(s) + 1 <= 150 for s in suffixes)
    for t, s in zip(cands, suffixes, strict=True):
        text = _text(enc, s)
        assert t in text and text.endswith(T.ANSWER_HEAD)


def test_rank_examples_negatives_and_answers(enc):
    data, valid, _, _ = synthetic(n_users=12)
    eval_only = {c for r in valid.requests for c in r.candidates} - {
        i for s in data.train for i in s.items}
    assert eval_only  # the toy data has items that only the candidate files mention
    ex = rank_examples(data.train, data.titles, enc, seed=3, max_len=2000, max_history=None,
                       max_targets_per_user=2)
    assert len(ex) == 2 * len(data.train)
    by_title = {v: k for k, v in data.titles.items()}
    j = 0
    for seq in data.train:
        for t in seq.target_positions()[-2:]:
            e = ex[j]
            j += 1
            answer = _text(enc, e.answer[:-1])
            assert e.answer[-1] == enc.eos and answer == data.titles[seq.items[t]]
            lines = _text(enc, e.prompt).split("\n")
            start = lines.index(T.CANDIDATES_HEAD.strip())
            cands = [by_title[x] for x in lines[start + 1:start + 31]]
            assert len(set(cands)) == 30 and seq.items[t] in cands
            negs = set(cands) - {seq.items[t]}
            assert not negs & set(seq.items)  # outside the user's history
            assert not negs & eval_only  # never from the evaluation candidate files
    again = rank_examples(data.train, data.titles, enc, seed=3, max_len=2000,
                          max_history=None, max_targets_per_user=2)
    assert again == ex


def test_targets_restrict_training_positions(enc):
    data, _, _, _ = synthetic(n_users=12)
    from bench.api import UserSequence

    seqs = tuple(UserSequence(s.user, s.items, (2,)) for s in data.train)
    ex = rank_examples(seqs, data.titles, enc, seed=0, max_len=2000, max_history=None,
                       max_targets_per_user=None)
    # every position of the full data is built (same negatives as without targets); only
    # the targets' are kept for training
    assert len(ex) == sum(len(s.items) - 1 for s in seqs)
    trained = [e for e in ex if e.kept]
    assert [_text(enc, e.answer[:-1]) for e in trained] == [data.titles[s.items[2]]
                                                            for s in seqs]
    full = rank_examples(data.train, data.titles, enc, seed=0, max_len=2000,
                         max_history=None, max_targets_per_user=None)
    assert [(e.prompt, e.answer) for e in ex] == [(e.prompt, e.answer) for e in full]


def test_yes_no_examples(enc):
    data, _, _, _ = synthetic(n_users=6)
    ex = yes_no_examples(data.train, data.titles, enc, seed=0, max_len=400, max_history=5,
                         max_targets_per_user=2, negatives_per_target=2)
    yes, no = enc.word(T.YES), enc.word(T.NO)
    assert yes != no
    assert [e.answer for e in ex] == [(yes,), (no,), (no,)] * (2 * len(data.train))


def test_a_heavy_user_of_a_small_catalogue_gets_what_negatives_exist(enc):
    """A user who saw all but 3 of the pool's items: the example takes those 3 (counted
    as short), instead of failing the whole cell (a 129-item catalogue at fewshot-10)."""
    from bench.api import UserSequence
    from molorec.instructions import short_of_negatives

    items = tuple(str(i) for i in range(40))
    titles = {i: title(int(i)) for i in items}
    seqs = (UserSequence("heavy", items[:37]), UserSequence("light", items[30:40]))
    ex = rank_examples(seqs, titles, enc, seed=0, max_len=4000, max_history=None,
                       max_targets_per_user=1)
    assert len(ex) == 2 and [e.short for e in ex] == [29 - 3, 0]
    assert short_of_negatives(ex) == 1
    text = _text(enc, ex[0].prompt)
    assert all(titles[i] in text for i in items[37:])  # the three unseen items
    yn = yes_no_examples(seqs, titles, enc, seed=0, max_len=4000, max_history=None,
                         max_targets_per_user=1, negatives_per_target=5)
    assert [e.short for e in yn][:4] == [2, 2, 2, 2]  # Yes + the 3 negatives that exist
