"""Instruction examples built from user sequences.

Ranking examples (MoLoRec): for a training position t, the prompt holds items[:t] as
history and 30 candidates (items[t] plus 29 negatives); the answer is items[t]'s title.
Yes/no examples (TALLRec): the same history and one candidate; the answer is Yes for
items[t], No for a negative.

Negatives are drawn with a seeded rng from the items of the training sequences of the
same corpus, minus everything the user ever interacted with: never from the evaluation
candidate files (a system never reads those), and never an item the user actually saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.api import UserSequence
from molorec.template import NO, YES, Encoder, rank_prompt, yes_no_parts
from protocols.digest import sequences_digest  # noqa: F401 - molorec's modules import it here


@dataclass(frozen=True)
class Example:
    """Prompt token ids and answer token ids (the loss is on the answer only)."""

    prompt: tuple[int, ...]
    answer: tuple[int, ...]


def item_pool(sequences: Sequence[UserSequence]) -> np.ndarray:
    """Sorted ids of every item in the sequences: where negatives come from."""
    return np.array(sorted({i for s in sequences for i in s.items}), dtype=object)


def sample_negatives(rng: np.random.Generator, pool: np.ndarray, exclude: set[str],
                     n: int) -> list[str]:
    """n distinct items of `pool` outside `exclude` (rejection sampling, seeded).
    `exclude` must be a subset of `pool` (a user's own items are)."""
    if len(pool) - len(exclude) < n:
        raise ValueError(f"item pool too small: need {n} negatives outside the user's "
                         f"{len(exclude)} items, pool has {len(pool)}")
    out: list[str] = []
    seen = set(exclude)
    while len(out) < n:
        for j in rng.integers(0, len(pool), size=2 * n):
            item = pool[j]
            if item not in seen:
                seen.add(item)
                out.append(item)
                if len(out) == n:
                    break
    return out


def _positions(seq: UserSequence, max_targets: int | None) -> tuple[int, ...]:
    pos = seq.target_positions()
    if max_targets is not None:
        pos = pos[-max_targets:] if max_targets > 0 else ()
    return pos


def rank_examples(sequences: Sequence[UserSequence], titles: dict[str, str], enc: Encoder,
                  *, seed: int, max_len: int, max_history: int | None,
                  max_targets_per_user: int | None, n_candidates: int = 30,
                  list_candidates: bool = True) -> list[Example]:
    """One ranking example per kept training position (the last `max_targets_per_user`
    positions of each user; None keeps all). `list_candidates` as in rank_prompt."""
    rng = np.random.default_rng(seed)
    pool = item_pool(sequences)
    out = []
    for seq in sequences:
        user_items = set(seq.items)
        for t in _positions(seq, max_targets_per_user):
            pos = seq.items[t]
            cands = [pos, *sample_negatives(rng, pool, user_items, n_candidates - 1)]
            cands = [cands[j] for j in rng.permutation(n_candidates)]
            cand_titles = [titles[c] for c in cands]
            reserve = max(len(enc.answer(c)) for c in cand_titles)
            prompt = rank_prompt(enc, [titles[i] for i in seq.items[:t]], cand_titles,
                                 max_len, reserve, max_history, list_candidates)
            out.append(Example(prompt.ids, enc.answer(titles[pos])))
    return out


def yes_no_examples(sequences: Sequence[UserSequence], titles: dict[str, str], enc: Encoder,
                    *, seed: int, max_len: int, max_history: int | None,
                    max_targets_per_user: int | None, negatives_per_target: int = 1
                    ) -> list[Example]:
    """TALLRec examples: per kept position one Yes (the true next item) and
    `negatives_per_target` No (sampled outside the user's items)."""
    rng = np.random.default_rng(seed)
    pool = item_pool(sequences)
    yes, no = enc.word(YES), enc.word(NO)
    out = []
    for seq in sequences:
        user_items = set(seq.items)
        for t in _positions(seq, max_targets_per_user):
            negs = sample_negatives(rng, pool, user_items, negatives_per_target)
            items = [seq.items[t], *negs]
            prefix, suffixes, _ = yes_no_parts(
                enc, [titles[i] for i in seq.items[:t]], [titles[i] for i in items],
                max_len, max_history)
            for j, suffix in enumerate(suffixes):
                out.append(Example(prefix + suffix, (yes if j == 0 else no,)))
    return out
