"""The instruction text, in one place, versioned and hashed into every cache key.

A prompt is a list of segments (header, one line per title, question...). Each segment
is tokenized on its own and the ids are concatenated, so a prompt's length is known
exactly from its parts: history can be cut from the oldest side until the prompt fits,
and the candidate list is never touched. Titles never contain newlines (TrainData says
so), so one title per line is unambiguous.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

TEMPLATE_VERSION = "molorec-template-2"  # 2: yes/no question before the candidate

RANK_HEADER = "Task: recommend the next item for a user.\n"
HISTORY_HEAD = "The user's history, oldest first:\n"
CANDIDATES_HEAD = "Candidates:\n"
RANK_QUESTION = "Which candidate will the user choose next? Answer with its title.\n"
# when the prompt lists no candidates (every candidate is still scored as the answer)
OPEN_QUESTION = "Which item will the user choose next? Answer with its title.\n"
ANSWER_HEAD = "Answer:\n"

YN_HEADER = "Task: decide whether a user will choose an item next.\n"
YN_CANDIDATE_HEAD = "Candidate:\n"
YN_QUESTION = "Will the user choose this candidate next? Answer Yes or No.\n"
YES = "Yes"
NO = "No"

_TEXTS = (RANK_HEADER, HISTORY_HEAD, CANDIDATES_HEAD, RANK_QUESTION, ANSWER_HEAD,
          YN_HEADER, YN_CANDIDATE_HEAD, YN_QUESTION, YES, NO)


def template_hash() -> str:
    """sha256 of the version and every template string: changes invalidate caches."""
    blob = json.dumps([TEMPLATE_VERSION, *_TEXTS, OPEN_QUESTION])
    return hashlib.sha256(blob.encode()).hexdigest()


def template_texts() -> tuple[str, ...]:
    """The fixed strings the tiny backbone's tokenizer and pretraining text use."""
    return _TEXTS


class PromptTooLong(ValueError):
    """The candidate list alone does not fit the context: candidates are never cut."""


class Encoder:
    """Tokenizes segments with a cache (titles repeat across thousands of prompts).

    `chat` wraps every prompt in the tokenizer's chat template (for instruct backbones):
    the wrapper's text before and after the user message becomes two more segments.
    """

    def __init__(self, tokenizer, chat: bool = False):
        self.tokenizer = tokenizer
        self._cache: dict[str, tuple[int, ...]] = {}
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token")
        self.eos = int(tokenizer.eos_token_id)
        # what the tokenizer puts before any text (Gemma's and Llama's <bos>): models
        # trained with it degrade without it. A chat template writes its own.
        self.pre: tuple[int, ...] = () if chat else _start_tokens(tokenizer)
        self.post: tuple[int, ...] = ()
        if chat:
            marker = "\x00MOLOREC\x00"
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": marker}], tokenize=False,
                add_generation_prompt=True)
            before, found, after = text.partition(marker)
            if not found:
                raise ValueError("the chat template does not reproduce the user message")
            self.pre, self.post = self.ids(before), self.ids(after)

    def ids(self, text: str) -> tuple[int, ...]:
        out = self._cache.get(text)
        if out is None:
            out = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            self._cache[text] = out
        return out

    def line(self, title: str) -> tuple[int, ...]:
        if "\n" in title:
            raise ValueError(f"title contains a newline: {title!r}")
        return self.ids(title + "\n")

    def answer(self, title: str) -> tuple[int, ...]:
        """A title as the model should produce it: its tokens then end-of-sequence."""
        if "\n" in title:
            raise ValueError(f"title contains a newline: {title!r}")
        return self.ids(title) + (self.eos,)

    def word(self, word: str) -> int:
        """The first token of a one-word answer (Yes/No)."""
        ids = self.ids(word)
        if not ids:
            raise ValueError(f"{word!r} encodes to no token")
        return ids[0]


def _start_tokens(tokenizer) -> tuple[int, ...]:
    """The special tokens a tokenizer adds before a text (none for Qwen2)."""
    full = list(tokenizer("x")["input_ids"])
    plain = list(tokenizer("x", add_special_tokens=False)["input_ids"])
    n = len(full) - len(plain)
    return tuple(full[:n]) if n > 0 and full[n:] == plain else ()


def _history_lines(enc: Encoder, history: Sequence[str], budget: int,
                   max_history: int | None) -> tuple[list[int], int]:
    """Newest titles first until `budget` tokens are used; returned oldest first."""
    kept: list[tuple[int, ...]] = []
    used = 0
    for title in reversed(history):
        if max_history is not None and len(kept) >= max_history:
            break
        ids = enc.line(title)
        if used + len(ids) > budget:
            break
        kept.append(ids)
        used += len(ids)
    out: list[int] = []
    for ids in reversed(kept):
        out.extend(ids)
    return out, len(kept)


@dataclass(frozen=True)
class Prompt:
    ids: tuple[int, ...]
    n_history: int  # history titles kept (newest ones)
    prefix_len: int  # tokens shared by every candidate (TALLRec prompts; else len(ids))


def rank_prompt(enc: Encoder, history: Sequence[str], candidates: Sequence[str],
                max_len: int, answer_reserve: int, max_history: int | None = None,
                list_candidates: bool = True) -> Prompt:
    """Ranking prompt: history, the full candidate list, the question. Without
    `list_candidates` the prompt asks for the next item outright (half the tokens on a
    CPU budget; every candidate is still scored as the answer).

    `answer_reserve` tokens are kept free for the answer (the longest candidate answer),
    so prompt + any candidate fits `max_len`.
    """
    head = list(enc.pre) + list(enc.ids(RANK_HEADER)) + list(enc.ids(HISTORY_HEAD))
    if list_candidates:
        tail = list(enc.ids(CANDIDATES_HEAD))
        for title in candidates:
            tail.extend(enc.line(title))
        tail += list(enc.ids(RANK_QUESTION))
    else:
        tail = list(enc.ids(OPEN_QUESTION))
    tail += list(enc.post) + list(enc.ids(ANSWER_HEAD))
    budget = max_len - answer_reserve - len(head) - len(tail)
    if budget < 0:
        raise PromptTooLong(
            f"{len(candidates)} candidates need {len(head) + len(tail) + answer_reserve} "
            f"tokens, more than max_len={max_len}")
    hist, n = _history_lines(enc, history, budget, max_history)
    ids = tuple(head + hist + tail)
    return Prompt(ids, n, len(ids))


def yes_no_parts(enc: Encoder, history: Sequence[str], candidates: Sequence[str],
                 max_len: int, max_history: int | None = None
                 ) -> tuple[tuple[int, ...], list[tuple[int, ...]], int]:
    """TALLRec prompts for several candidates: a shared prefix (header, history,
    question) and one short suffix per candidate (candidate, answer head), so that the
    30 suffixes cost little after one prefill. Returns (prefix, suffixes, history titles
    kept); prefix + the longest suffix + 1 answer token fits `max_len`."""
    head = list(enc.pre) + list(enc.ids(YN_HEADER)) + list(enc.ids(HISTORY_HEAD))
    question = list(enc.ids(YN_QUESTION))
    suffixes = []
    for title in candidates:
        s = enc.ids(YN_CANDIDATE_HEAD) + enc.line(title) + enc.post + enc.ids(ANSWER_HEAD)
        suffixes.append(s)
    longest = max(len(s) for s in suffixes)
    budget = max_len - 1 - len(head) - len(question) - longest
    if budget < 0:
        raise PromptTooLong(f"a yes/no prompt needs {len(head) + len(question) + longest + 1} "
                            f"tokens, more than max_len={max_len}")
    hist, n = _history_lines(enc, history, budget, max_history)
    return tuple(head + hist + question), suffixes, n
