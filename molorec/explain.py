"""A case study (the paper's Figure 6): one test user, MoLoRec's generated recommendation
among the 30 candidates, and its explanation, asked for in a second prompt.

It serves the mixture the table cell learned (its general and specific modules from the
run's cache, the per-layer weights its describe() recorded, rounded to 4 decimals) and
generates greedily. The recommendation prompt lists the candidates (whatever the
profile's `prompt.list_candidates`: a generated answer must be able to name one); the
explanation prompt shows the history and the recommended title and asks why. Where the
positive was ranked comes from the cell's stored scores, the numbers of the table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.api import ScoreRequest
from molorec import ranking as R
from molorec.systems import MoLoRec
from molorec.template import ANSWER_HEAD, HISTORY_HEAD, rank_prompt
from protocols.files import ProtocolFiles

# the second prompt; kept out of molorec.template so that its hash (every cache key) holds
EXPLAIN_HEADER = "Task: explain a recommendation to a user.\n"
RECOMMENDED_HEAD = "Recommended item:\n"
WHY = ("Why would this user like the recommended item? Answer in one or two sentences, "
       "based on the history.\n")


@dataclass(frozen=True)
class CaseStudy:
    dataset: str
    setting: str
    seed: int
    user: str
    history: list[str]  # titles, oldest first (those the prompt kept are the last ones)
    n_history_in_prompt: int
    candidates: list[str]  # titles, candidate-file order
    positive: int  # index into candidates
    answer: str  # the generated recommendation, as generated
    chosen: int | None  # the candidate it names (None: no candidate)
    explanation: str
    rank: tuple[int, int] | None  # the positive's rank range in the stored scores
    backbone: str
    weights_note: str


def positive_rank(scores: list[float] | None, positive: int) -> tuple[int, int] | None:
    """(best, worst) rank of the positive under the tie rule; None for an abstention."""
    if scores is None:
        return None
    s = np.asarray(scores, dtype=np.float64)
    above = int((s > s[positive]).sum())
    tied = int((s == s[positive]).sum()) - 1
    return above + 1, above + tied + 1


def stored_scores(cell_dir: Path, user: str) -> list[float] | None:
    for line in (Path(cell_dir) / "scores.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["user"] == user:
            return row["scores"]
    raise KeyError(user)


def _request(proto: ProtocolFiles, user: str) -> tuple[ScoreRequest, str]:
    for req, pos in zip(proto.test_requests, proto.test_positives(), strict=True):
        if req.user == user:
            return req, pos
    some = ", ".join(r.user for r in proto.test_requests[:5])
    raise KeyError(f"user {user!r} is not a test user of this protocol (e.g. {some})")


def case_study(proto: ProtocolFiles, meta: dict[str, Any], cell_dir: Path, user: str,
               workdir: str | Path, *, max_len: int = 1024, answer_tokens: int = 48,
               explanation_tokens: int = 96) -> CaseStudy:
    """Generate the recommendation and its explanation for `user` with the MoLoRec cell
    described by `meta` (its cell.json), on the protocol it was scored on."""
    req, pos = _request(proto, user)
    info = meta["describe"]
    system = MoLoRec(meta["config"], int(meta["seed"]), str(workdir))
    try:
        arts = system.train_artifacts(proto.data)
        lr = info.get("specific_lr")
        specific = arts["specific"][lr] if lr is not None else next(
            iter(arts["specific"].values()))
        system.parts = (arts["general"], specific)
        system._serve_weights(info["weights_by_layer"])
        enc, titles = system.enc, system.titles
        cands = [titles[c] for c in req.candidates]
        history = [titles[i] for i in req.history]
        reserve = max(len(enc.answer(t)) for t in cands)
        p = system.prompting
        prompt = rank_prompt(enc, history, cands, max(max_len, p.max_len), reserve,
                             p.max_history, list_candidates=True)
        backend = system.backend
        answer = enc.tokenizer.decode(backend.generate([prompt.ids], answer_tokens,
                                                       enc.eos)[0], skip_special_tokens=True)
        chosen = R.parse_answer(answer, cands)
        named = cands[chosen] if chosen is not None else " ".join(answer.split())
        kept = history[len(history) - prompt.n_history:]
        ids = list(enc.pre) + list(enc.ids(EXPLAIN_HEADER)) + list(enc.ids(HISTORY_HEAD))
        for t in kept:
            ids += enc.line(t)
        ids += list(enc.ids(RECOMMENDED_HEAD)) + list(enc.line(named or "(none)"))
        ids += list(enc.ids(WHY)) + list(enc.post) + list(enc.ids(ANSWER_HEAD))
        explanation = enc.tokenizer.decode(backend.generate([ids], explanation_tokens,
                                                            enc.eos)[0],
                                           skip_special_tokens=True)
        note = (f"mixture weights as learned for the table ({info.get('mixture_method')}; "
                f"mean general/specific over blocks "
                f"{_mean_weights(info['weights_by_layer'])})")
        return CaseStudy(meta["dataset"], meta["setting"], int(meta["seed"]), user, history,
                         prompt.n_history, cands, req.candidates.index(pos), answer.strip(),
                         chosen, explanation.strip(),
                         positive_rank(stored_scores(cell_dir, user), req.candidates.index(pos)),
                         info.get("backbone", "?"), note)
    finally:
        system.close()


def _mean_weights(weights: dict[str, list[float]]) -> str:
    w = np.mean(list(weights.values()), axis=0)
    return "/".join(f"{x:.2f}" for x in w)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def _quote(text: str) -> str:
    """A block quote of every line of `text` (runs of blank lines kept as one)."""
    lines = [_md(x.rstrip()) for x in text.strip().splitlines()]
    kept = [x for n, x in enumerate(lines) if x or (n and lines[n - 1])]
    return "\n".join(f"> {x}".rstrip() for x in kept) if kept else "> (empty)"


def to_markdown(cs: CaseStudy) -> str:
    """The case study as a Markdown page."""
    rank = ("no ranking (the cell abstained for this user)" if cs.rank is None else
            f"rank {cs.rank[0]} of {len(cs.candidates)}" if cs.rank[0] == cs.rank[1] else
            f"ranks {cs.rank[0]}-{cs.rank[1]} of {len(cs.candidates)} (tied scores)")
    picked = ("names no candidate (an invalid answer)" if cs.chosen is None else
              f"candidate {cs.chosen + 1}: {_md(cs.candidates[cs.chosen])}"
              + (" (the positive)" if cs.chosen == cs.positive else ""))
    lines = [f"# Case study: user {_md(cs.user)}, {cs.dataset} ({cs.setting}), seed {cs.seed}",
             "", f"MoLoRec on {cs.backbone}; {cs.weights_note}.", "",
             f"## History ({len(cs.history)} items, oldest first; the prompt kept the last "
             f"{cs.n_history_in_prompt})", ""]
    lines += [f"{n}. {_md(t)}" for n, t in enumerate(cs.history, 1)]
    lines += ["", f"## Candidates (1 positive + {len(cs.candidates) - 1} negatives, in the "
              "candidate file's order)", ""]
    for n, t in enumerate(cs.candidates):
        tags = [x for x, on in (("positive", n == cs.positive), ("recommended",
                                                                  n == cs.chosen)) if on]
        lines.append(f"{n + 1}. {_md(t)}" + (f" **({', '.join(tags)})**" if tags else ""))
    lines += ["", "## MoLoRec's recommendation (generated, greedy)", "",
              _quote(cs.answer), "", f"It {picked}.", "",
              "## Its explanation (a second prompt: why would the user like it?)", "",
              _quote(cs.explanation), "",
              "## Where the positive was ranked", "",
              f"{_md(cs.candidates[cs.positive])}: {rank} in the table's stored scores "
              "(the cell's ranking mode)."]
    return "\n".join(lines) + "\n"
