"""RecLoRA (Zhu et al., arXiv 2408.03533) as a row of the tables, written from the paper.

- Personalized LoRA: a bank of N meta-LoRAs on the backbone's q and v projections, mixed
  per user by gates g(u) = softmax(router(h_u) / T) (molorec.gated). h_u is the sequence
  vector of a frozen conventional recommender (the SASRec system, trained on the target
  training split, cached in the run's store) over the user's long history.
- Long-short modality retriever: the recommender reads a long window (`long_history`
  items), the prompt a short one (`short_history` titles): the most recent, or
  (`retrieval`) those of the long window whose titles are closest to the candidate's.
- Few2Many: the LLM and router train on a small sample of the training targets; the
  recommender on all of them.
- Pointwise yes/no training and ranking by logit(Yes) - logit(No), as TALLRec; the
  negatives are TALLRec's (sampled outside the user's items, never from candidate files).

Temperature and history variant are chosen on validation. The gates differ per user, so
the adapter cannot be merged or served as one LoRA: scoring runs the bank in the
transformers backend, with users batched (`score_batch`), each row with its own gates.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from bench.api import ScoreRequest, System, TrainData, Validation
from molorec import ranking as R
from molorec import selection as SEL
from molorec.artifacts import capped
from molorec.backends.hf import _progress
from molorec.cache import cached_dir, stable_hash
from molorec.gated import GatedBank, Router
from molorec.instructions import (
    Example,
    item_pool,
    kept,
    positions,
    sample_negatives,
    sequences_digest,
    share_key,
)
from molorec.lm import autocast, device_of, logits_at, right_pad
from molorec.profiles import PROFILES
from molorec.systems import _LLMSystem
from molorec.template import NO, YES, yes_no_parts
from molorec.train_loop import TrainSettings, seed_everything, train

HISTORIES = ("recent", "retrieval")
ITEM_VECTORS = "title-mean-hidden-1"  # versions how title vectors are computed (cache key)
NEEDS = ("sequence_vectors", "save_model", "load_model")  # what the recommender offers


@dataclass(frozen=True)
class GatedExample(Example):
    """A yes/no example, the row of its user's vector (of the history before the target)
    and its candidate item."""

    row: int = 0
    item: str = ""


def retrieve(history: Sequence[str], candidate: str, vectors: Mapping[str, np.ndarray],
             k: int) -> list[str]:
    """The k items of `history` whose title vectors are closest (cosine; the vectors are
    unit length) to the candidate's, in history order; equal similarity keeps the more
    recent. Reads the history and the candidate only, never whether it is the positive."""
    if len(history) <= k:
        return list(history)
    c = vectors[candidate]
    sims = [float(vectors[i] @ c) for i in history]
    best = sorted(range(len(history)), key=lambda j: (-sims[j], -j))[:k]
    return [history[j] for j in sorted(best)]


def split_shared(prompts: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], list[tuple]]:
    """(the longest prefix all prompts share, each prompt's rest): what packed scoring
    runs once and per candidate. Every rest keeps at least its last token."""
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    common = next((j for j in range(n) if any(p[j] != first[j] for p in prompts)), n)
    return tuple(first[:common]), [tuple(p[common:]) for p in prompts]


class RecLoRA(_LLMSystem):
    """Per-user mixtures of N meta-LoRAs, gated by a frozen SASRec's user vector."""

    name: ClassVar[str] = "RecLoRA"
    group: ClassVar[str] = "LLM-Based"
    profiles = PROFILES["reclora"]

    def __init__(self, config: dict[str, Any], seed: int, workdir: str | None = None):
        super().__init__(config, seed, workdir)
        if self.backend_name != "hf":
            raise ValueError(
                f"RecLoRA cannot run on ranking.backend: {self.backend_name}: its LoRAs are "
                "mixed per user (gates from the recommender), so there is no single adapter "
                "to merge or serve (vLLM serves one LoRA per request); set ranking.backend: hf")
        self.rc = self.config["reclora"]
        self.histories = SEL.as_list(self.rc["history"])
        if not self.histories or set(self.histories) - set(HISTORIES):
            raise ValueError(f"reclora.history must list some of {HISTORIES}, got "
                             f"{self.histories}")
        self.rec: System | None = None
        self.bank: GatedBank | None = None
        self.router: Router | None = None
        self.vectors: dict[str, np.ndarray] = {}
        self.temperature, self.history = 1.0, "recent"
        self._test_gates: list[np.ndarray] = []

    # -- the frozen recommender -------------------------------------------------------
    def _recommender(self, data: TrainData, valid: Validation) -> System:
        """The recommender system, fit once per key (early stopping on validation, as
        its own row does) and loaded from the store."""
        from bench import registry

        cfg = self.config["recommender"]
        cls = registry.resolve(cfg["system"])
        missing = [m for m in NEEDS if not hasattr(cls, m)]
        if missing:
            raise TypeError(f"RecLoRA's recommender {cls.name} lacks {', '.join(missing)}")
        key = {"what": "recommender", "system": cls.name, "config": cfg["config"],
               "seed": self.seed, "dataset": data.dataset, "setting": data.setting,
               "train": sequences_digest(data.train),
               "valid": stable_hash([[r.user, list(r.history), list(r.candidates)]
                                     for r in valid.requests] + list(valid.positives))}

        def build(out: Path) -> None:
            rec = cls(dict(cfg["config"]), self.seed, self.workdir)
            rec.fit(data, valid)
            rec.save_model(out)

        t0 = time.perf_counter()
        path = cached_dir(self.workdir, "reclora-recommender", key, build)
        rec = cls(dict(cfg["config"]), self.seed, self.workdir)
        rec.load_model(data, path)
        self.rec_key = stable_hash(key)
        self.info["recommender"] = {"system": cls.name, **{k: v for k, v in rec.describe().items()
                                    if k in ("best_epoch", "epochs_run", "valid_ndcg1")}}
        self.info.setdefault("seconds", {})["recommender"] = round(time.perf_counter() - t0, 1)
        return rec

    # -- title vectors for the retrieval variant --------------------------------------
    def _title_vectors(self, data: TrainData, model) -> dict[str, np.ndarray]:
        """Unit-length mean of the backbone's last hidden states over each title's tokens
        (no adapter), for every item; computed once per backbone and titles."""
        from safetensors.torch import load_file, save_file

        items = sorted(data.titles)
        key = {"what": "title-vectors", "how": ITEM_VECTORS, "backbone": self.backbone_key,
               "titles": stable_hash([[i, data.titles[i]] for i in items])}

        def build(out: Path) -> None:
            save_file({"vectors": self._embed([data.titles[i] for i in items], model)},
                      str(out / "vectors.safetensors"))
            (out / "items.json").write_text(json.dumps(items))

        path = cached_dir(self.workdir, "reclora-titles", key, build)
        vecs = load_file(str(path / "vectors.safetensors"))["vectors"].numpy()
        return dict(zip(json.loads((path / "items.json").read_text()), vecs, strict=True))

    @torch.no_grad()
    def _embed(self, titles: list[str], model, batch: int = 64) -> torch.Tensor:
        device = device_of(model)
        pre = len(self.enc.pre)
        out = []
        for lo in range(0, len(titles), batch):
            seqs = [self.enc.pre + self.enc.ids(t) for t in titles[lo:lo + batch]]
            ids, mask = right_pad(seqs, 0, device)
            with autocast(self.backend.compute, device):
                _, res = logits_at(model, torch.tensor([0], device=device),
                                   torch.tensor([0], device=device), input_ids=ids,
                                   attention_mask=mask, output_hidden_states=True)
            hidden = res.hidden_states[-1].float()
            keep = mask.clone()
            keep[:, :pre] = 0  # the title's own tokens, not <bos>
            mean = (hidden * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)
            out.append(torch.nn.functional.normalize(mean, dim=-1).cpu())
        return torch.cat(out)

    # -- prompts ----------------------------------------------------------------------
    def _prompt_for(self, history: Sequence[str], item: str, variant: str) -> tuple[int, ...]:
        """The yes/no prompt of (history, candidate): TALLRec's text with the short
        history, the most recent titles or those retrieved for this candidate."""
        k = int(self.rc["short_history"])
        if variant == "retrieval":
            history = retrieve(history[-int(self.rc["long_history"]):], item, self.vectors, k)
        p = self.prompting
        prefix, suffixes, _ = yes_no_parts(self.enc, [self.titles[i] for i in history],
                                           [self.titles[item]], p.max_len, k)
        return prefix + suffixes[0]

    def _parts(self, req: ScoreRequest) -> tuple[tuple[int, ...], list[tuple]]:
        return split_shared([self._prompt_for(req.history, c, self.history)
                             for c in req.candidates])

    def examples(self, data: TrainData, variant: str
                 ) -> tuple[list[GatedExample], np.ndarray, int]:
        """TALLRec's yes/no examples (same positions, negatives, cap and few-shot share)
        with this row's prompts, the recommender's vector of each example's history, and
        how many examples the full setting trains on."""
        rng = np.random.default_rng(self.seed)
        pool = item_pool(data.train)
        yes, no = self.enc.word(YES), self.enc.word(NO)
        keep = self.rc.get("max_targets_per_user")
        histories, out = [], []
        for seq in data.train:
            for t, share in positions(seq, keep):
                want = int(self.rc.get("negatives_per_target", 1))
                negs = sample_negatives(rng, pool, set(seq.items), want)
                histories.append(seq.items[:t])
                for j, item in enumerate([seq.items[t], *negs]):
                    out.append(GatedExample(self._prompt_for(seq.items[:t], item, variant),
                                            (yes if j == 0 else no,), kept=share,
                                            short=want - len(negs),
                                            row=len(histories) - 1, item=item))
        full = capped(out, self.rc.get("max_examples"), self.seed)
        examples = kept(full)
        if full and not examples:
            raise ValueError(f"the few-shot share kept none of RecLoRA's {len(full)} training "
                             "examples: use a larger share")
        return examples, self.rec.sequence_vectors(histories), len(full)

    # -- training ---------------------------------------------------------------------
    def _gates(self, histories: Sequence[Sequence[str]]) -> torch.Tensor:
        h = torch.from_numpy(self.rec.sequence_vectors(histories))
        self.router.eval()
        with torch.no_grad():
            return self.router(h.to(device_of(self.router)), self.temperature)

    def _train(self, data: TrainData, temperature: float, variant: str) -> Path:
        """The bank and router for one (T, history variant), trained once per key."""
        from safetensors.torch import save_file

        settings = {k: v for k, v in self.rc.items() if k not in ("temperature", "history",
                                                                  "score_batch")}
        key = {"what": "reclora", "backbone": self.backbone_key, "recommender": self.rec_key,
               "prompt": self.prompting.key(), "dataset": data.dataset,
               "setting": data.setting, "train": sequences_digest(data.train, data.titles),
               **share_key(data.train), "settings": settings, "temperature": temperature,
               "history": variant,
               "compute": self.backend.compute, "seed": self.seed}
        if variant == "retrieval":
            key["vectors"] = ITEM_VECTORS

        def build(out: Path) -> None:
            t0 = time.perf_counter()
            examples, vectors, n_full = self.examples(data, variant)
            seed_everything(self.seed)
            self.bank.reset()
            router = self._new_router(vectors.shape[1])
            h = torch.from_numpy(vectors).to(device_of(router))

            def gated(chunk: Sequence[GatedExample]):
                return self.bank.gated(router(h[[e.row for e in chunk]], temperature))

            cfg = TrainSettings.from_config({**self.rc["train"],
                                             "compute": self.backend.compute})
            router.train()
            losses = train(self.model, examples, cfg, self.seed, self.pad,
                           extra_params=list(router.parameters()),
                           around=gated)
            router.eval()
            save_file({**self.bank.tensors(), **{f"router.{k}": v.detach().cpu().contiguous()
                                                 for k, v in router.state_dict().items()}},
                      str(out / "reclora.safetensors"))
            (out / "record.json").write_text(json.dumps({
                "losses": losses, "examples": len(examples), "examples_full_setting": n_full,
                "dim": int(vectors.shape[1]),
                "seconds": time.perf_counter() - t0}))

        return cached_dir(self.workdir, "reclora", key, build)

    def _new_router(self, dim: int) -> Router:
        r = self.rc.get("router", {})
        return Router(dim, int(self.rc["n_loras"]), int(r.get("hidden", 60)),
                      float(r.get("dropout", 0.1))).to(device_of(self.model))

    def _load(self, path: Path, temperature: float, variant: str) -> dict[str, Any]:
        from safetensors.torch import load_file

        tensors = load_file(str(path / "reclora.safetensors"))
        record = json.loads((path / "record.json").read_text())
        self.bank.load(tensors)
        self.router = self._new_router(record["dim"])
        self.router.load_state_dict({k[len("router."):]: v for k, v in tensors.items()
                                     if k.startswith("router.")})
        self.router.eval()
        self.temperature, self.history = temperature, variant
        return record

    def fit(self, data: TrainData, valid: Validation) -> None:
        self.train_artifacts(data)
        self.backbone_key = self.artifacts.backbone.key
        self.rec = self._recommender(data, valid)
        seed_everything(self.seed)
        self.model = self._start_backend().trainer_model()
        tok = self.enc.tokenizer
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else self.enc.eos
        if "retrieval" in self.histories:
            self.vectors = self._title_vectors(data, self.model)  # before the bank
        lora = self.rc["lora"]
        self.bank = GatedBank(self.model, int(self.rc["n_loras"]), int(lora["r"]),
                              float(lora["alpha"]), float(lora.get("dropout", 0.0)),
                              lora.get("target_modules", ("q_proj", "v_proj")))
        combos = [(float(t), v) for t in SEL.as_list(self.rc["temperature"])
                  for v in self.histories]
        sub = self._selection_valid(valid) if len(combos) > 1 else valid
        results, paths = {}, {}
        for temperature, variant in combos:
            label = f"T={temperature:g} history={variant}"
            paths[label] = (self._train(data, temperature, variant), temperature, variant)
            record = self._load(*paths[label])
            self.info.setdefault("training", {})[label] = {
                "losses": [round(x, 4) for x in record["losses"]],
                "examples": record["examples"],
                "examples_full_setting": record.get("examples_full_setting", record["examples"]),
                "seconds": round(record["seconds"], 1)}
            if len(combos) > 1:
                results[label] = self._evaluate(sub)
        if results:
            best = SEL.first_best(results)
            self._load(*paths[best])
            self.info["valid_by_setting"] = {k: round(v, 4) for k, v in results.items()}
            self.info[self.valid_key] = round(results[best], 4)
        else:
            self._report_valid(valid)
        self.info.update({"n_loras": int(self.rc["n_loras"]), "temperature": self.temperature,
                          "history": self.history, "short_history": self.rc["short_history"],
                          "long_history": self.rc["long_history"]})

    # -- ranking ----------------------------------------------------------------------
    def _rank(self, requests: Sequence[ScoreRequest]) -> np.ndarray:
        if self.bank is None:
            raise RuntimeError("call fit() before score()")
        if not requests:
            return np.zeros((0, 0))
        gates = self._gates([r.history for r in requests])
        self._last_gates = gates.cpu().numpy()
        parts = [self._parts(r) for r in requests]
        yes, no = self.enc.word(YES), self.enc.word(NO)
        step = int(self.rc.get("score_batch", 1))
        out: list[np.ndarray] = []
        with autocast(self.backend.compute, device_of(self.model)):
            for lo in _progress(range(0, len(parts), step), "RecLoRA yes/no"):
                with self.bank.gated(gates[lo:lo + step]):
                    out += R.yes_no_scores_batch(self.model, parts[lo:lo + step], yes, no)
        return np.stack(out)

    def score(self, requests: Sequence[ScoreRequest]) -> np.ndarray:
        scores = super().score(requests)
        self._test_gates.append(self._last_gates)
        return scores

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self._test_gates:
            g = np.concatenate(self._test_gates)
            out["test_gates"] = {  # how personal the adapters are
                "mean": [round(float(x), 4) for x in g.mean(0)],
                "std_across_users": [round(float(x), 4) for x in g.std(0)],
                "mean_max": round(float(g.max(1).mean()), 4)}
        return out

    def caption_note(self) -> str:
        return ("RecLoRA ranks by logit(Yes) - logit(No) with a per-user mixture of "
                f"{self.rc['n_loras']} LoRAs (hf backend)")

    def close(self) -> None:
        self.bank = self.router = self.rec = self.model = None
        super().close()
