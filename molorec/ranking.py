"""Ranking 30 candidates with a causal LM, in two modes.

`score` mode: each candidate is scored by the log-likelihood of its title as the answer
(title tokens followed by end-of-sequence, so a title that is a prefix of another is not
favoured). Length normalization: `mean` divides the sum of token log-probabilities by the
number of answer tokens (end-of-sequence included), so long titles are not penalized
for their length; `sum` keeps the raw joint log-likelihood. Every candidate gets a
finite score: no invalid outputs are possible.

The prompt is the same for all 30 candidates, so it is encoded once: `packed` (default)
runs the prompt and all 30 candidates in one forward, one sequence under a block mask;
`batch` prefills the prompt and runs the candidates as a batch of 30 on its KV cache
repeated 30 times. The tokens processed are the prompt once plus every candidate once,
where naive scoring processes the prompt 30 times. Only the positions that predict an
answer token are projected onto the vocabulary (molorec.lm.head_at).

`generate` mode: greedy decoding, the answer parsed against the candidate titles (exact
match after whitespace/case normalization, else the longest candidate title contained
in the answer). An answer that names no candidate is invalid: its row is all NaN, the
harness's abstention, which the metrics count as a miss (the positive ranked last), as
`generate_hits` does. A valid answer ranks the named candidate first and ties the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from molorec.lm import cache_kw, custom_mask, device_of, logits_at, new_cache, right_pad

LENGTH_NORMS = ("mean", "sum")
KV_SHARING = ("packed", "batch")


def _vocab_index(vocab: torch.Tensor | None, device) -> tuple[torch.Tensor | None, dict | None]:
    """The restricted vocabulary on `device` and token id -> column (None: full)."""
    if vocab is None:
        return None, None
    vocab = vocab.to(device)
    return vocab, {int(t): j for j, t in enumerate(vocab.tolist())}


def _columns(tokens: Sequence[int], index: dict | None, device) -> torch.Tensor:
    if index is None:
        return torch.tensor(list(tokens), device=device)
    try:
        return torch.tensor([index[int(t)] for t in tokens], device=device)
    except KeyError as e:
        raise ValueError(f"answer token {e.args[0]} is outside the scoring vocabulary") from None


def prefill(model, ids: Sequence[int], vocab: torch.Tensor | None = None):
    """One forward of a prompt into a fresh full cache: (last-position logits, cache)."""
    device = device_of(model)
    cache = new_cache()
    rows = torch.tensor([len(ids) - 1], device=device)
    logits, out = logits_at(model, rows, vocab, fp32=True,
                            input_ids=torch.tensor([list(ids)], device=device),
                            use_cache=True, **{cache_kw(model): cache})
    return logits[0].float(), cache


def _layout(prompt: Sequence[int], seqs: Sequence[Sequence[int]]
            ) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """(ids, positions, allowed attention) of a prompt and its continuations packed into
    one sequence (see `_packed`)."""
    p, total = len(prompt), sum(len(s) for s in seqs)
    allow = torch.zeros((p + total, p + total), dtype=torch.bool)
    allow[:p, :p] = torch.ones((p, p), dtype=torch.bool).tril()
    allow[p:, :p] = True
    ids, pos, off = list(prompt), list(range(p)), p
    for s in seqs:
        n = len(s)
        ids.extend(s)
        pos.extend(range(p, p + n))
        allow[off:off + n, off:off + n] = torch.ones((n, n), dtype=torch.bool).tril()
        off += n
    return ids, torch.tensor(pos), allow


def _packed(model, prompt: Sequence[int], seqs: Sequence[Sequence[int]],
            rows: Sequence[int], vocab: torch.Tensor | None) -> torch.Tensor:
    """The prompt and all continuations in one forward, as one packed sequence.

    The prompt is causal; each continuation token sees the whole prompt and the earlier
    tokens of its own continuation only, with positions restarting after the prompt (and
    sliding-window layers their window), so every continuation is computed exactly as
    if it ran alone after the prompt. `rows` are the continuation-relative positions
    whose logits are wanted, -1 being the prompt's last token. No KV cache is kept."""
    device = device_of(model)
    dtype = next(model.parameters()).dtype
    p = len(prompt)
    ids, pos_t, allow = _layout(prompt, seqs)
    mask = custom_mask(model, allow, pos_t, pos_t, dtype)
    keep = torch.as_tensor([p + r for r in rows], dtype=torch.long, device=device)
    logits, _ = logits_at(model, keep, vocab, fp32=True,
                          input_ids=torch.tensor([ids], device=device),
                          attention_mask=mask, position_ids=pos_t[None].to(device))
    return logits


def _starts(seqs: Sequence[Sequence[int]]) -> list[int]:
    out, off = [], 0
    for s in seqs:
        out.append(off)
        off += len(s)
    return out


def _batched(model, cache, prompt_len: int, seqs: Sequence[Sequence[int]],
             vocab: torch.Tensor | None) -> torch.Tensor:
    """All continuations as a batch on the prompt's cache repeated per continuation;
    logits at every real (unpadded) position, concatenated in order."""
    device = device_of(model)
    cache.batch_repeat_interleave(len(seqs))
    ids, mask = right_pad(seqs, 0, device)
    full_mask = torch.cat([torch.ones((len(seqs), prompt_len), dtype=torch.long,
                                      device=device), mask], dim=1)
    pos = torch.arange(prompt_len, prompt_len + ids.shape[1], device=device)
    rows = torch.nonzero(mask.reshape(-1), as_tuple=True)[0]
    logits, _ = logits_at(model, rows, vocab, fp32=True, input_ids=ids,
                          attention_mask=full_mask,
                          position_ids=pos.unsqueeze(0).expand(len(seqs), -1),
                          use_cache=True, **{cache_kw(model): cache})
    return logits


@torch.no_grad()
def answer_logprobs(model, prompt: Sequence[int], answers: Sequence[Sequence[int]],
                    sharing: str = "packed", vocab: torch.Tensor | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(sum of answer-token log-probs, answer lengths) for every answer, sharing the
    prompt: the prompt and all answers in one forward, packed into one sequence with a
    block mask (`packed`), or one prefill and then a batch on its KV cache repeated per
    answer (`batch`). Logits are computed only where an answer token is predicted.
    `vocab` (sorted token ids) restricts the softmax to those tokens (every answer token
    must be among them); None is the model's whole vocabulary."""
    if any(len(a) == 0 for a in answers):
        raise ValueError("empty answer")
    if sharing not in KV_SHARING:
        raise ValueError(f"sharing must be one of {KV_SHARING}, got {sharing!r}")
    device = device_of(model)
    vocab, index = _vocab_index(vocab, device)
    seqs = [a[:-1] for a in answers if len(a) > 1]
    n_cont = sum(len(x) for x in seqs)
    if sharing == "packed":
        logits = _packed(model, prompt, seqs, range(-1, n_cont), vocab)
        last, cont = logits[0].float(), logits[1:]
    else:
        last, cache = prefill(model, prompt, vocab)
        cont = _batched(model, cache, len(prompt), seqs, vocab) if seqs else None
    first = torch.log_softmax(last, -1)
    total = first[_columns([a[0] for a in answers], index, device)].double()
    if seqs:
        logp = torch.log_softmax(cont.float(), -1)
        targets = _columns([t for a in answers if len(a) > 1 for t in a[1:]], index, device)
        per_token = logp.gather(-1, targets[:, None])[:, 0].double()
        sums = iter(torch.split(per_token, [len(x) for x in seqs]))
        for row, a in enumerate(answers):
            if len(a) > 1:
                total[row] += next(sums).sum()
    lengths = np.array([len(a) for a in answers], dtype=np.float64)
    return total.cpu().numpy(), lengths


@torch.no_grad()
def answer_logprobs_naive(model, prompt: Sequence[int], answers: Sequence[Sequence[int]],
                          vocab: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The reference: one full forward of prompt + answer per candidate."""
    device = device_of(model)
    vocab, index = _vocab_index(vocab, device)
    total = np.empty(len(answers))
    for j, a in enumerate(answers):
        x = torch.tensor([list(prompt) + list(a)], device=device)
        rows = torch.arange(len(prompt) - 1, len(prompt) + len(a) - 1, device=device)
        logits, _ = logits_at(model, rows, vocab, fp32=True, input_ids=x)
        logp = torch.log_softmax(logits.float(), -1)
        tgt = _columns(a, index, device)
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
    """logit(Yes) - logit(No) after each prefix + suffix: the prefix and every suffix run
    packed in one forward; only the two answer logits are projected."""
    pair = torch.tensor([yes, no], device=device_of(model))
    ends = [st + len(x) - 1 for st, x in zip(_starts(suffixes), suffixes, strict=True)]
    logits = _packed(model, prefix, suffixes, ends, pair)
    at = logits.float()
    return (at[:, 0] - at[:, 1]).double().cpu().numpy()


@torch.no_grad()
def yes_no_scores_batch(model, requests: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
                        yes: int, no: int) -> list[np.ndarray]:
    """`yes_no_scores` of several (prefix, suffixes) requests in one forward: each request
    is one packed row, rows right-padded (a padding position sees only itself). Row b is
    requests[b], so a per-row input of the model (RecLoRA's per-user gates) follows the
    request order. Equal to one request at a time up to float summation order."""
    device = device_of(model)
    dtype = next(model.parameters()).dtype
    layouts = [_layout(prefix, suffixes) for prefix, suffixes in requests]
    width = max(len(ids) for ids, _, _ in layouts)
    ids_t = torch.zeros((len(layouts), width), dtype=torch.long)
    pos_t = torch.zeros((len(layouts), width), dtype=torch.long)
    allow = torch.eye(width, dtype=torch.bool).repeat(len(layouts), 1, 1)
    keep = []
    for b, ((ids, pos, ok), (prefix, suffixes)) in enumerate(zip(layouts, requests,
                                                                 strict=True)):
        n = len(ids)
        ids_t[b, :n], pos_t[b, :n], allow[b, :n, :n] = torch.tensor(ids), pos, ok
        keep += [b * width + len(prefix) + st + len(x) - 1
                 for st, x in zip(_starts(suffixes), suffixes, strict=True)]
    mask = custom_mask(model, allow, pos_t, pos_t, dtype)
    pair = torch.tensor([yes, no], device=device)
    logits, _ = logits_at(model, torch.tensor(keep, device=device), pair, fp32=True,
                          input_ids=ids_t.to(device), attention_mask=mask,
                          position_ids=pos_t.to(device))
    diff = (logits[:, 0].float() - logits[:, 1].float()).double().cpu().numpy()
    return list(np.split(diff, np.cumsum([len(s) for _, s in requests])[:-1]))


@torch.no_grad()
def greedy_decode(model, prompt: Sequence[int], max_new: int, eos: int) -> list[int]:
    """Greedy tokens after `prompt`, stopping at end-of-sequence (not included)."""
    device = device_of(model)
    last, cache = prefill(model, prompt)
    out: list[int] = []
    for step in range(max_new):
        tok = int(torch.argmax(last))
        if tok == eos:
            break
        out.append(tok)
        if step == max_new - 1:
            break
        logits, _ = logits_at(model, torch.tensor([0], device=device), None, fp32=True,
                              input_ids=torch.tensor([[tok]], device=device),
                              use_cache=True, **{cache_kw(model): cache})
        last = logits[0].float()
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
