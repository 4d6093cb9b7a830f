"""Instruction examples built from user sequences.

Ranking examples (MoLoRec): for a training position t, the prompt holds items[:t] as
history and 30 candidates (items[t] plus 29 negatives); the answer is items[t]'s title.
Yes/no examples (TALLRec): the same history and one candidate; the answer is Yes for
items[t], No for a negative.

Few-shot data (sequences with `targets`): the examples are built exactly as for the full
data (every position of the whole sequence, the last `max_targets_per_user` of them, the
same negatives), and each is marked `kept` when the few-shot share kept its position; the
caps apply to that full list first (`molorec.artifacts.capped`) and training then uses
the kept examples only. So a p% setting trains on p% (in expectation, nested) of the
examples the same system trains on in the full setting, whatever its caps.

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
    kept: bool = True  # False: the few-shot share left this example's position out
    short: int = 0  # negatives fewer than asked: the user had seen nearly the whole pool


# versions how a few-shot share selects training examples (part of their cache keys)
SHARE_RULE = 2


def share_key(sequences: Sequence[UserSequence]) -> dict[str, int]:
    """The cache-key part for the few-shot selection rule: empty for full training data,
    so keys of the warm and cold settings stay as they were."""
    return {"share_rule": SHARE_RULE} if any(s.targets is not None for s in sequences) else {}


def kept(examples: Sequence[Example]) -> list[Example]:
    """The examples the few-shot share kept (all of them for full training data)."""
    return [e for e in examples if e.kept]


def short_of_negatives(examples: Sequence[Example]) -> int:
    """How many examples got fewer negatives than asked (a small catalogue)."""
    return sum(1 for e in examples if e.short)


def item_pool(sequences: Sequence[UserSequence]) -> np.ndarray:
    """Sorted ids of every item in the sequences: where negatives come from."""
    return np.array(sorted({i for s in sequences for i in s.items}), dtype=object)


def sample_negatives(rng: np.random.Generator, pool: np.ndarray, exclude: set[str],
                     n: int) -> list[str]:
    """n distinct items of `pool` outside `exclude` (rejection sampling, seeded), or all
    of them in a seeded order when fewer than n exist (a heavy user of a small catalogue;
    one training example must not fail a cell). `exclude` must be a subset of `pool`
    (a user's own items are)."""
    if len(pool) - len(exclude) < n:
        rest = [i for i in pool if i not in exclude]
        return [rest[j] for j in rng.permutation(len(rest))]
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


def positions(seq: UserSequence, max_targets: int | None) -> tuple[tuple[int, bool], ...]:
    """The positions the full data trains on (the last `max_targets` of the whole
    sequence; None keeps all), each with whether the few-shot share kept it."""
    pos = tuple(range(1, len(seq.items)))
    if max_targets is not None:
        pos = pos[-max_targets:] if max_targets > 0 else ()
    share = None if seq.targets is None else set(seq.targets)
    return tuple((t, share is None or t in share) for t in pos)


def rank_examples(sequences: Sequence[UserSequence], titles: dict[str, str], enc: Encoder,
                  *, seed: int, max_len: int, max_history: int | None,
                  max_targets_per_user: int | None, n_candidates: int = 30,
                  list_candidates: bool = True) -> list[Example]:
    """One ranking example per training position (the last `max_targets_per_user`
    positions of each user; None keeps all), marked `kept` as the few-shot share says.
    `list_candidates` as in rank_prompt."""
    rng = np.random.default_rng(seed)
    pool = item_pool(sequences)
    out = []
    for seq in sequences:
        user_items = set(seq.items)
        for t, keep in positions(seq, max_targets_per_user):
            pos = seq.items[t]
            cands = [pos, *sample_negatives(rng, pool, user_items, n_candidates - 1)]
            cands = [cands[j] for j in rng.permutation(len(cands))]
            cand_titles = [titles[c] for c in cands]
            reserve = max(len(enc.answer(c)) for c in cand_titles)
            prompt = rank_prompt(enc, [titles[i] for i in seq.items[:t]], cand_titles,
                                 max_len, reserve, max_history, list_candidates)
            out.append(Example(prompt.ids, enc.answer(titles[pos]), keep,
                               n_candidates - len(cands)))
    return out


def yes_no_examples(sequences: Sequence[UserSequence], titles: dict[str, str], enc: Encoder,
                    *, seed: int, max_len: int, max_history: int | None,
                    max_targets_per_user: int | None, negatives_per_target: int = 1
                    ) -> list[Example]:
    """TALLRec examples: per training position (marked as in `rank_examples`) one Yes
    (the true next item) and `negatives_per_target` No (sampled outside the user's
    items)."""
    rng = np.random.default_rng(seed)
    pool = item_pool(sequences)
    yes, no = enc.word(YES), enc.word(NO)
    out = []
    for seq in sequences:
        user_items = set(seq.items)
        for t, keep in positions(seq, max_targets_per_user):
            negs = sample_negatives(rng, pool, user_items, negatives_per_target)
            items = [seq.items[t], *negs]
            prefix, suffixes, _ = yes_no_parts(
                enc, [titles[i] for i in seq.items[:t]], [titles[i] for i in items],
                max_len, max_history)
            short = negatives_per_target - len(negs)
            for j, suffix in enumerate(suffixes):
                out.append(Example(prefix + suffix, (yes if j == 0 else no,), keep, short))
    return out
