"""P5 (Geng et al., RecSys 2022), sequential-recommendation task, reimplemented.

A T5 encoder-decoder is trained text-to-text on sequential-recommendation prompts
("Given the following interaction history of user_0412 : 0871 , 0032 , ... predict the
next item ...") whose answer is the next item's ID string. Users and items are numeric
ID strings, randomly permuted with the seed and zero-padded to a fixed width (so test
items are not the highest numbers); as in P5, the tokens of one ID share a whole-word
embedding added to the encoder input. Pretraining on the domain-general corpus, then
fine-tuning on the target domain, epochs selected on validation. Score: the teacher-forced
log-likelihood of each candidate's ID tokens plus end-of-sequence given the prompt, so
exactly the request's candidates are ranked and nothing is generated.

cpu profile: a randomly initialized small T5 over a word-level vocabulary in which an
ID is split into 2-digit pieces (like sentencepiece splits numbers); paper profile: t5-small
and its tokenizer from a local path or the Hugging Face cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baselines import text_encoder
from baselines._textseq import (
    ItemVocab,
    Workspace,
    batches,
    pin_text_model,
    pretrain_key,
)
from baselines.common import EarlyStopping, device_for
from bench.api import ScoreRequest, System, TrainData, UserSequence, Validation
from bench.seeding import seed_everything
from protocols.digest import digest

# {user} and {items} are filled in; the answer is the next item's ID.
TEMPLATES = (
    "Given the following interaction history of user_ {user} : {items} , predict the next "
    "item the user will interact with ?",
    "User_ {user} has interacted with items {items} . What is the next item to recommend "
    "to the user ?",
    "Here is the history of user_ {user} : {items} . What to recommend next for the user ?",
)


class PieceTokenizer:
    """Word-level vocabulary for the templates plus digit pieces for IDs (cpu profile)."""

    pad_id, eos_id, unk_id = 0, 1, 2

    def __init__(self, width: int):
        words = {w for t in TEMPLATES for w in t.split() if not w.startswith("{")}
        pieces = [f"{n:02d}" for n in range(100)] + [str(n) for n in range(10)]
        tokens = ["<pad>", "</s>", "<unk>", ","] + sorted(words - {","}) + pieces
        self.vocab = {w: i for i, w in enumerate(tokens)}
        self.width = width

    @property
    def size(self) -> int:
        return len(self.vocab)

    def words(self, text: str) -> list[int]:
        return [self.vocab.get(w, self.unk_id) for w in text.split()]

    def ident(self, code: str) -> list[int]:
        return [self.vocab[code[i:i + 2]] for i in range(0, len(code), 2)]


class HFTokenizer:
    """A pretrained T5 tokenizer (paper profile); IDs are tokenized as plain text."""

    def __init__(self, tok: Any):
        self.tok = tok
        self.pad_id, self.eos_id = tok.pad_token_id, tok.eos_token_id
        self.size = len(tok)

    def words(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def ident(self, code: str) -> list[int]:
        return self.tok(code, add_special_tokens=False)["input_ids"]


def id_strings(names: Sequence[str], seed: int, stream: int) -> dict[str, str]:
    """Seeded random permutation of 0..n-1 as zero-padded, fixed-width strings."""
    perm = np.random.default_rng([seed, stream]).permutation(len(names))
    width = max(2, len(str(max(0, len(names) - 1))))
    return {name: str(int(p)).zfill(width) for name, p in zip(names, perm, strict=True)}


class P5Net(nn.Module):
    def __init__(self, cfg: dict[str, Any], tok_width: int):
        super().__init__()
        from transformers import T5Config, T5ForConditionalGeneration

        if cfg["t5"] == "random":
            self.tok: PieceTokenizer | HFTokenizer = PieceTokenizer(tok_width)
            conf = T5Config(vocab_size=self.tok.size, d_model=cfg["d_model"],
                            d_ff=cfg["d_ff"], d_kv=cfg["d_model"] // cfg["heads"],
                            num_layers=cfg["layers"], num_decoder_layers=cfg["layers"],
                            num_heads=cfg["heads"], dropout_rate=cfg["dropout"],
                            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
            self.t5 = T5ForConditionalGeneration(conf)
        else:
            path = text_encoder.resolve_model_dir(cfg["t5"])
            from transformers import AutoTokenizer

            self.tok = HFTokenizer(AutoTokenizer.from_pretrained(str(path),
                                                                 local_files_only=True))
            self.t5 = T5ForConditionalGeneration.from_pretrained(str(path),
                                                                 local_files_only=True)
        self.whole_word = nn.Embedding(cfg["max_hist"] + 2, self.t5.config.d_model)
        nn.init.zeros_(self.whole_word.weight)

    @property
    def device(self) -> torch.device:
        return self.whole_word.weight.device

    def prompt(self, template: int, user: str, items: Sequence[str]) -> tuple[list[int], list[int]]:
        """(token ids, whole-word ids) of a filled template; ID pieces share a word id."""
        ids: list[int] = []
        ww: list[int] = []
        word = 0
        for part in TEMPLATES[template].split():
            if part in ("{user}", "{items}"):
                codes = [user] if part == "{user}" else list(items)
                for n, code in enumerate(codes):
                    if n:
                        ids += self.tok.words(",")
                        ww.append(0)
                    word = min(word + 1, self.whole_word.num_embeddings - 1)
                    piece = self.tok.ident(code)
                    ids += piece
                    ww += [word] * len(piece)
            else:
                w = self.tok.words(part)
                ids += w
                ww += [0] * len(w)
        return ids + [self.tok.eos_id], ww + [0]

    def encode(self, prompts: Sequence[tuple[list[int], list[int]]]) -> tuple[Any, torch.Tensor]:
        length = max(len(p[0]) for p in prompts)
        ids = torch.full((len(prompts), length), self.tok.pad_id, dtype=torch.long)
        ww = torch.zeros_like(ids)
        for n, (p, w) in enumerate(prompts):
            ids[n, :len(p)] = torch.tensor(p)
            ww[n, :len(w)] = torch.tensor(w)
        mask = (torch.arange(length).unsqueeze(0) <
                torch.tensor([len(p[0]) for p in prompts]).unsqueeze(1)).long()
        ids, ww, mask = ids.to(self.device), ww.to(self.device), mask.to(self.device)
        emb = self.t5.get_input_embeddings()(ids) + self.whole_word(ww)
        enc = self.t5.get_encoder()(inputs_embeds=emb, attention_mask=mask)
        return enc.last_hidden_state, mask

    def target_logprob(self, hidden: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor
                       ) -> torch.Tensor:
        """Sum of teacher-forced log p(target tokens) per row; targets (B, T) end in EOS
        and are right-padded with -100."""
        start = torch.full((len(targets), 1), self.t5.config.decoder_start_token_id,
                           dtype=torch.long, device=targets.device)
        dec_in = torch.cat([start, targets[:, :-1].clamp_min(0)], 1)
        out = self.t5(encoder_outputs=(hidden,), attention_mask=mask,
                      decoder_input_ids=dec_in)
        logp = F.log_softmax(out.logits.float(), dim=-1)
        real = targets >= 0
        tok = logp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        return (tok * real).sum(-1)


def pad_targets(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    """Right-pad token rows with -100 (ignored by the loss and the likelihood)."""
    out = torch.full((len(rows), max(len(r) for r in rows)), -100, dtype=torch.long)
    for n, r in enumerate(rows):
        out[n, :len(r)] = torch.tensor(list(r))
    return out


class P5(System):
    name = "P5"
    group = "LLM-Based"
    full_ranking_reason = "it scores each candidate's item code with a T5 decoder pass"
    uses_gpu: ClassVar[bool] = True  # T5 is trained on it
    profiles: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"t5": "random", "d_model": 32, "d_ff": 64, "layers": 1, "heads": 2,
                  "dropout": 0.1, "max_hist": 5, "batch_size": 64, "lr": 3e-3, "per_user": 3,
                  "pretrain_epochs": 1, "epochs": 2, "patience": 1},
        "cpu": {"t5": "random", "d_model": 64, "d_ff": 128, "layers": 2, "heads": 4,
                "dropout": 0.1, "max_hist": 10, "batch_size": 64, "lr": 2e-3, "per_user": 20,
                "pretrain_epochs": 3, "epochs": 12, "patience": 3},
        # Geng et al.: t5-small, lr 1e-3, batch 32 per GPU, 10 epochs, histories up to 20
        # items; every training target used each epoch.
        "paper": {"t5": "t5-small", "max_hist": 20, "batch_size": 32, "lr": 1e-3,
                  "per_user": 1000000, "pretrain_epochs": 10, "epochs": 10, "patience": 3},
    }

    @classmethod
    def configure(cls, config: dict[str, Any], backbone: str | None = None,
                  backbone_label: str | None = None) -> dict[str, Any]:
        """The text model pinned by the sha256 of its files (in the cell key)."""
        return pin_text_model(config, "t5")

    def __init__(self, config: dict[str, Any], seed: int, workdir: str | None = None):
        super().__init__(config, seed, workdir)
        self.ws = Workspace(workdir)
        self.net: P5Net | None = None
        self.item_code: dict[str, str] = {}
        self.user_code: dict[str, str] = {}
        self.device = device_for(self.config)
        self.info: dict[str, Any] = {"device": self.device.type}

    def _net(self, width: int) -> P5Net:
        """A new network on this system's device."""
        return P5Net(self.config, width).to(self.device)

    def _samples(self, seqs: Sequence[UserSequence], rng: np.random.Generator
                 ) -> list[tuple[list[int], list[int], list[int]]]:
        """(prompt ids, whole-word ids, answer ids + EOS) for up to per_user targets each
        (of a few-shot share, those it kept)."""
        net, cfg = self.net, self.config
        out = []
        for s in seqs:
            # drawn among every position, as in the full setting, then only the positions a
            # few-shot share kept: p% of the full setting's samples, nested
            pos = list(range(1, len(s.items)))
            if not pos:
                continue
            share = None if s.targets is None else set(s.targets)
            for t in sorted(rng.choice(pos, min(cfg["per_user"], len(pos)), replace=False)):
                template = int(rng.integers(len(TEMPLATES)))
                if share is not None and t not in share:
                    continue
                hist = [self.item_code[i] for i in s.items[max(0, t - cfg["max_hist"]):t]]
                ids, ww = net.prompt(template, self.user_code[s.user], hist)
                answer = net.tok.ident(self.item_code[s.items[t]]) + [net.tok.eos_id]
                out.append((ids, ww, answer))
        return out

    def _train(self, seqs: Sequence[UserSequence], epochs: int, stream: int,
               valid: Validation | None) -> EarlyStopping:
        net, cfg = self.net, self.config
        rng = np.random.default_rng([self.seed, stream])
        opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"])
        best = EarlyStopping(cfg["patience"])
        for epoch in range(epochs):
            samples = self._samples(seqs, rng)
            net.train()
            for idx in batches(len(samples), cfg["batch_size"], rng):
                hidden, mask = net.encode([samples[i][:2] for i in idx])
                tgt = pad_targets([samples[i][2] for i in idx]).to(self.device)
                start = torch.full((len(idx), 1), net.t5.config.decoder_start_token_id,
                                   device=self.device)
                dec_in = torch.cat([start, tgt[:, :-1].clamp_min(0)], 1)
                logits = net.t5(encoder_outputs=(hidden,), attention_mask=mask,
                                decoder_input_ids=dec_in).logits
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                       ignore_index=-100)
                opt.zero_grad()
                loss.backward()
                opt.step()
            net.eval()
            if valid is not None and valid.requests:
                if best.update(valid.evaluate(self.score), epoch, net):
                    break
        return best

    def fit(self, data: TrainData, valid: Validation) -> None:
        cfg = self.config
        seed_everything(self.seed)
        vocab = ItemVocab(data.titles)
        self.item_code = id_strings(vocab.ids, self.seed, 11)
        users = sorted({s.user for s in data.train} | {s.user for s in data.general}
                       | {r.user for r in valid.requests})
        self.user_code = id_strings(users, self.seed, 12)
        width = max(len(c) for c in self.item_code.values())
        self.net = self._net(width)
        if data.general and cfg["pretrain_epochs"] > 0:
            key = pretrain_key(cfg, ("epochs", "patience"), self.seed, data, items=vocab.ids,
                               users=users)
            state = self.ws.cached_state(
                "p5", key, lambda: (self._train(data.general, cfg["pretrain_epochs"], 1, None),
                                    self.net.state_dict())[1])
            self.net.load_state_dict(state)
            self.info["pretrained"] = digest(key)[:12]
        seed_everything(self.seed + 1)  # same stream whether or not pretraining ran here
        best = self._train(data.train, cfg["epochs"], 2, valid)
        best.restore(self.net)
        self.net.eval()
        self.info.update(best_epoch=best.best_epoch, valid_ndcg1=best.history,
                         id_width=width)

    def _user(self, user: str) -> str:
        """A user unseen at fit time gets no ID of its own: a fixed all-nines code."""
        code = self.user_code.get(user)
        if code is None:
            width = len(next(iter(self.user_code.values())))
            code = "9" * width
        return code

    def candidate_ids(self, request: ScoreRequest) -> list[list[int]]:
        """Token ids (ID pieces + EOS) of each of the request's candidates, in order."""
        try:
            return [self.net.tok.ident(self.item_code[c]) + [self.net.tok.eos_id]
                    for c in request.candidates]
        except KeyError as e:
            raise ValueError(f"candidate {e.args[0]!r} has no title in the training data"
                             ) from None

    def score(self, requests: Sequence[ScoreRequest]) -> np.ndarray:
        if self.net is None:
            raise RuntimeError("P5.score called before fit")
        net, cfg = self.net, self.config
        n_c = len(requests[0].candidates) if requests else 0
        out = np.zeros((len(requests), n_c))
        with torch.no_grad():
            for idx in batches(len(requests), 32):
                prompts = []
                for i in idx:
                    r = requests[i]
                    hist = [self.item_code[h] for h in r.history[-cfg["max_hist"]:]]
                    prompts.append(net.prompt(0, self._user(r.user), hist))
                hidden, mask = net.encode(prompts)
                cands = [self.candidate_ids(requests[i]) for i in idx]
                if any(len(c) != n_c for c in cands):
                    raise ValueError("requests have different numbers of candidates")
                tgt = pad_targets([c for cs in cands for c in cs]).to(hidden.device)
                rep = torch.arange(len(idx), device=hidden.device).repeat_interleave(n_c)
                lp = net.target_logprob(hidden[rep], mask[rep], tgt)
                out[idx] = lp.view(len(idx), n_c).double().cpu().numpy()
        return out

    def describe(self) -> dict[str, Any]:
        return dict(self.info)
