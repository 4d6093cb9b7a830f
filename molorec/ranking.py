"""Ranking 30 candidates with a causal LM, in two modes.

`score` mode: each candidate is scored by the log-likelihood of its title as the answer
(title tokens followed by end-of-sequence, so a title that is a prefix of another is not
favoured). Length normalization: `mean` divides the sum of token log-probabilities by the
number of answer tokens (end-of-sequence included), so long titles are not penalized
for their length; `sum` keeps the raw joint log-likelihood. Every candidate gets a
finite score: no invalid outputs are possible.

The prompt is the same for all 30 candidates, so it is encoded once (one prefill) and
all 30 candidates then run in one forward on its KV cache: packed into one sequence
under a block mask (default; no copy of the cache), or as a batch of 30 on the cache
repeated 30 times. The tokens processed are the prompt once plus every candidate once,
where naive scoring processes the prompt 30 times.

`generate` mode: greedy decoding, the answer parsed against the candidate titles (exact
match after whitespace/case normalization, else the longest candidate title contained
in the answer). An answer that names no candidate is invalid: its row is all NaN, the
harness's abstention, which the metrics count as a miss (the positive ranked last), as
`generate_hits` does. A valid answer ranks the named candidate first and ties the rest.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np
import torch

LENGTH_NORMS = ("mean", "sum")


def _cache_kw(model) -> str:
    """Transformers renamed `past_key_values` to `cache`; accept both versions."""
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _keep(model, n: int) -> dict[str, int]:
    """Compute logits for the last n positions only (`num_logits_to_keep` before 4.50)."""
    params = inspect.signature(type(model).forward).parameters
    for kw in ("logits_to_keep", "num_logits_to_keep"):
        if kw in params:
            return {kw: n}
    return {}


def _out_cache(out):
    return getattr(out, "cache", None) or getattr(out, "past_key_values", None)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def prefill(model, ids: Sequence[int]):
    """One forward of a prompt: (last-position logits, KV cache)."""
    x = torch.tensor([list(ids)], device=_device(model))
    out = model(input_ids=x, use_cache=True, **_keep(model, 1))
    return out.logits[0, -1].float(), _out_cache(out)


def _right_pad(seqs: Sequence[Sequence[int]], pad: int, device) -> tuple[torch.Tensor, ...]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, :len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[row, :len(s)] = 1
    return ids.to(device), mask.to(device)


def _continue(model, cache, prompt_len: int, seqs: Sequence[Sequence[int]], pad: int):
    """Run a batch of continuations on a prompt's cache (already repeated to the batch)."""
    device = _device(model)
    ids, mask = _right_pad(seqs, pad, device)
    full_mask = torch.cat([torch.ones((len(seqs), prompt_len), dtype=torch.long,
                                      device=device), mask], dim=1)
    pos = torch.arange(prompt_len, prompt_len + ids.shape[1], device=device)
    pos = pos.unsqueeze(0).expand(len(seqs), -1)
    return model(input_ids=ids, attention_mask=full_mask, position_ids=pos,
                 use_cache=True, **{_cache_kw(model): cache}).logits


def _packed_continue(model, cache, prompt_len: int, seqs: Sequence[Sequence[int]]
                     ) -> tuple[torch.Tensor, list[int]]:
    """Run all continuations on a prompt's cache (batch 1) as one packed sequence.

    A block mask lets each continuation token see the prompt and the earlier tokens of
    its own continuation only, with positions restarting after the prompt, so every
    continuation is computed exactly as if it ran alone. Returns logits (T, vocab) and
    each continuation's start row."""
    device = _device(model)
    dtype = next(model.parameters()).dtype
    total = sum(len(s) for s in seqs)
    allow = torch.zeros((total, prompt_len + total), dtype=torch.bool)
    allow[:, :prompt_len] = True
    ids, pos, starts, off = [], [], [], 0
    for s in seqs:
        n = len(s)
        starts.append(off)
        ids.extend(s)
        pos.extend(range(prompt_len, prompt_len + n))
        allow[off:off + n, prompt_len + off:prompt_len + off + n] = torch.ones(
            (n, n), dtype=torch.bool).tril()
        off += n
    mask = torch.zeros(allow.shape, dtype=dtype).masked_fill(~allow, torch.finfo(dtype).min)
    out = model(input_ids=torch.tensor([ids], device=device),
                attention_mask=mask[None, None].to(device),
                position_ids=torch.tensor([pos], device=device), use_cache=True,
                **{_cache_kw(model): cache})
    return out.logits[0], starts


KV_SHARING = ("packed", "batch")


@torch.no_grad()
def answer_logprobs(model, prompt: Sequence[int], answers: Sequence[Sequence[int]],
                    sharing: str = "packed") -> tuple[np.ndarray, np.ndarray]:
    """(sum of answer-token log-probs, answer lengths) for every answer, sharing the
    prompt: one prefill, then all answers in one forward on its KV cache, either packed
    into one sequence with a block mask (`packed`) or as a batch of 30 on the cache
    repeated 30 times (`batch`)."""
    if any(len(a) == 0 for a in answers):
        raise ValueError("empty answer")
    if sharing not in KV_SHARING:
        raise ValueError(f"sharing must be one of {KV_SHARING}, got {sharing!r}")
    last, cache = prefill(model, prompt)
    first = torch.log_softmax(last, -1)
    total = torch.stack([first[a[0]] for a in answers]).double()
    rest = [(row, a) for row, a in enumerate(answers) if len(a) > 1]
    if rest:
        if sharing == "packed":
            logits, starts = _packed_continue(model, cache, len(prompt),
                                              [a[:-1] for _, a in rest])
            rows = [(row, a, logits[st:st + len(a) - 1])
                    for (row, a), st in zip(rest, starts, strict=True)]
        else:
            cache.batch_repeat_interleave(len(rest))
            logits = _continue(model, cache, len(prompt), [a[:-1] for _, a in rest], pad=0)
            rows = [(row, a, logits[j, :len(a) - 1]) for j, (row, a) in enumerate(rest)]
        for row, a, lg in rows:
            tgt = torch.tensor(list(a[1:]), device=lg.device)
            logp = torch.log_softmax(lg.float(), -1)
            total[row] += logp.gather(-1, tgt[:, None]).sum().double()
    lengths = np.array([len(a) for a in answers], dtype=np.float64)
    return total.cpu().numpy(), lengths


@torch.no_grad()
def answer_logprobs_naive(model, prompt: Sequence[int], answers: Sequence[Sequence[int]]
                          ) -> tuple[np.ndarray, np.ndarray]:
    """The reference: one full forward of prompt + answer per candidate."""
    device = _device(model)
    total = np.empty(len(answers))
    for j, a in enumerate(answers):
        x = torch.tensor([list(prompt) + list(a)], device=device)
        # logits only where an answer token is predicted, as in the shared path
        logits = model(input_ids=x, **_keep(model, len(a) + 1)).logits[0, -len(a) - 1:-1]
        logp = torch.log_softmax(logits.float(), -1)
        tgt = torch.tensor(list(a), device=device)
        total[j] = float(logp.gather(-1, tgt[:, None]).double().sum())
    return total, np.array([len(a) for a in answers], dtype=np.float64)


def normalize(total: np.ndarray, lengths: np.ndarray, norm: str) -> np.ndarray:
    if norm == "mean":
        return total / lengths
    if norm == "sum":
        return total
    raise ValueError(f"length_norm must be one of {LENGTH_NORMS}, got {norm!r}")


def tokens_processed(prompt_len: int, answer_lens: Sequence[int], shared: bool) -> int:
    """Tokens run through the model to score one request (the count the benchmark
    reports): the prompt once plus each answer (minus its last token, never an input)."""
    cont = sum(n - 1 for n in answer_lens)
    return prompt_len + cont if shared else len(answer_lens) * prompt_len + cont


@torch.no_grad()
def yes_no_scores(model, prefix: Sequence[int], suffixes: Sequence[Sequence[int]],
                  yes: int, no: int) -> np.ndarray:
    """logit(Yes) - logit(No) after each prefix + suffix: the prefix is prefilled once
    and the suffixes run packed on its cache."""
    _, cache = prefill(model, prefix)
    logits, starts = _packed_continue(model, cache, len(prefix), suffixes)
    last = torch.tensor([st + len(s) - 1 for st, s in zip(starts, suffixes, strict=True)],
                        device=logits.device)
    at = logits[last].float()
    return (at[:, yes] - at[:, no]).double().cpu().numpy()


@torch.no_grad()
def greedy_decode(model, prompt: Sequence[int], max_new: int, eos: int) -> list[int]:
    """Greedy tokens after `prompt`, stopping at end-of-sequence (not included)."""
    device = _device(model)
    last, cache = prefill(model, prompt)
    out: list[int] = []
    kw = _cache_kw(model)
    for _ in range(max_new):
        tok = int(torch.argmax(last))
        if tok == eos:
            break
        out.append(tok)
        res = model(input_ids=torch.tensor([[tok]], device=device), use_cache=True,
                    **{kw: cache})
        last, cache = res.logits[0, -1].float(), _out_cache(res)
    return out


def _norm_text(s: str) -> str:
    return " ".join(s.split()).casefold()


def parse_answer(text: str, titles: Sequence[str]) -> int | None:
    """Index of the candidate the generated `text` names, or None (an invalid answer)."""
    normed = [_norm_text(t) for t in titles]
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    first = _norm_text(lines[0]) if lines else ""
    if first in normed:
        return normed.index(first)
    whole = _norm_text(text)
    contained = [(len(t), -j) for j, t in enumerate(normed) if t and t in whole]
    if not contained:
        return None
    return -max(contained)[1]


def generate_scores(parsed: Sequence[int | None], n_candidates: int) -> np.ndarray:
    """1 for the named candidate, 0 elsewhere; an invalid answer's row is all NaN (abstains)."""
    scores = np.zeros((len(parsed), n_candidates))
    for row, j in enumerate(parsed):
        if j is None:
            scores[row] = np.nan
        else:
            scores[row, j] = 1.0
    return scores


def generate_hits(parsed: Sequence[int | None], positives: Sequence[int]) -> np.ndarray:
    """Hit@1 per request as the paper counts it: an invalid answer is a miss."""
    return np.array([1.0 if (p is not None and p == q) else 0.0
                     for p, q in zip(parsed, positives, strict=True)])
