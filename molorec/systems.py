"""The LLM-based rows of the tables: the backbone zero-shot, TALLRec, MoLoRec-G/-S, MoLoRec.

All share one frozen backbone and the artifacts cached under the workdir: the backbone
itself (tiny profiles), the domain-general LoRA (keyed on the backbone, the general
corpus and its settings only, so every target domain reuses it), and the
domain-specific LoRA (keyed on the target training split; shared by MoLoRec-S and
MoLoRec). Every hyperparameter choice is made on the validation candidates; test
requests are used unlabeled, and only by the entropy-guided mixture.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from bench.api import ScoreRequest, System, TrainData, Validation
from molorec import backbone as B
from molorec import lora as L
from molorec import ranking as R
from molorec.instructions import rank_examples, sequences_digest, yes_no_examples
from molorec.mixture import Mixture, grid_search, learn_entropy
from molorec.profiles import PROFILES
from molorec.template import NO, YES, Encoder, rank_prompt, template_hash, yes_no_parts
from molorec.train_loop import TrainSettings, seed_everything

MIXTURE_METHODS = ("fixed", "grid", "entropy")


class _LLMSystem(System):
    """Backbone loading, prompt encoding and ranking shared by every LLM row."""

    group: ClassVar[str] = "LLM-Based"

    def __init__(self, config: dict[str, Any], seed: int, workdir: str | None = None):
        super().__init__(config, seed, workdir)
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="molorec-")
            self.workdir = self._tmp.name
        rank = self.config.get("ranking", {})
        self.mode = rank.get("mode", "score")
        if self.mode not in ("score", "generate"):
            raise ValueError(f"ranking mode must be 'score' or 'generate', got {self.mode!r}")
        self.length_norm = rank.get("length_norm", "mean")
        self.sharing = rank.get("sharing", "packed")
        self.max_new_tokens = int(rank.get("max_new_tokens", 64))
        prompt = self.config.get("prompt", {})
        self.max_len = int(prompt.get("max_len", 1024))
        self.max_history = prompt.get("max_history")
        self.info: dict[str, Any] = {"ranking_mode": self.mode}
        self.model = None
        self.enc: Encoder | None = None
        self.titles: dict[str, str] = {}

    # -- artifacts -------------------------------------------------------------------
    def _backbone(self, data: TrainData) -> B.Backbone:
        t0 = time.perf_counter()
        bb = B.ensure_backbone(self.config["backbone"], data.general, data.titles,
                               self.workdir)
        self.info["backbone"] = bb.label
        self.enc = Encoder(bb.tokenizer(), chat=bb.chat)
        self.info.setdefault("seconds", {})["backbone"] = round(time.perf_counter() - t0, 1)
        return bb

    def _load(self, bb: B.Backbone, adapters: Sequence[L.Adapter] = ()) -> Mixture | None:
        """A fresh copy of the backbone, with `adapters` mixed in (unmerged) if any."""
        self.model = None  # free the previous copy first
        self.model, _ = bb.load()
        return Mixture(self.model, adapters) if adapters else None

    def _prompt_key(self) -> dict[str, Any]:
        return {"template": template_hash(), "max_len": self.max_len,
                "max_history": self.max_history}

    def _general_adapter(self, bb: B.Backbone, data: TrainData) -> L.Adapter:
        """The domain-general module: depends on the backbone and general corpus only."""
        cfg = self.config["general"]
        key = {"what": "general", **self._prompt_key(),
               "corpus": sequences_digest(data.general, data.titles),
               "max_targets_per_user": cfg.get("max_targets_per_user")}
        return self._adapter("lora-general", key, bb, cfg, "general",
                             lambda enc: rank_examples(
                                 data.general, data.titles, enc, seed=self.seed,
                                 max_len=self.max_len, max_history=self.max_history,
                                 max_targets_per_user=cfg.get("max_targets_per_user")))

    def _target_key(self, data: TrainData, what: str, cfg: dict) -> dict[str, Any]:
        return {"what": what, **self._prompt_key(), "dataset": data.dataset,
                "setting": data.setting, "train": sequences_digest(data.train, data.titles),
                "max_targets_per_user": cfg.get("max_targets_per_user"),
                "negatives_per_target": cfg.get("negatives_per_target")}

    def _adapter(self, kind: str, key: dict, bb: B.Backbone, cfg: dict, name: str,
                 make, lr: float | None = None) -> L.Adapter:
        t0 = time.perf_counter()
        train_cfg = dict(cfg["train"])
        if lr is not None:
            train_cfg["lr"] = lr
        settings = TrainSettings.from_config(train_cfg)
        enc = self.enc
        path = L.ensure_adapter(self.workdir, kind, key, bb, lambda: make(enc),
                                L.LoraSettings.from_config(self.config.get("lora", {})),
                                settings, self.seed, name)
        meta = L.adapter_meta(path)
        self.info.setdefault("adapters", {})[f"{name}@lr={settings.lr:g}"] = {
            "losses": [round(x, 4) for x in meta["losses"]], "examples": meta["examples"],
            "train_seconds": round(meta["seconds"], 1)}
        self.info.setdefault("seconds", {})[f"adapter {name} lr={settings.lr:g}"] = round(
            time.perf_counter() - t0, 1)
        return L.load_adapter(path, name)

    def _select_single(self, bb: B.Backbone, adapters: dict[float, L.Adapter],
                       valid: Validation, record: str = "valid_by_lr") -> tuple[float, float]:
        """Load each single adapter merged, score validation, keep the best loaded.
        Returns (learning rate, validation NDCG@1)."""
        results = {}
        for lr, adapter in adapters.items():
            if len(adapters) > 1 or self.model is None:
                self._load(bb, [adapter]).merge()
            results[lr] = self._evaluate(valid)
        self.info[record] = {f"{lr:g}": round(v, 4) for lr, v in results.items()}
        best = max(results, key=lambda lr: (results[lr], -list(results).index(lr)))
        if len(adapters) > 1 and best != list(adapters)[-1]:
            self._load(bb, [adapters[best]]).merge()
        return best, round(results[best], 4)

    # -- ranking ---------------------------------------------------------------------
    def _rank(self, requests: Sequence[ScoreRequest]) -> np.ndarray:
        """(n, 30) scores with the model as it is now (merged or not)."""
        if self.model is None:
            raise RuntimeError("call fit() before score()")
        if not requests:
            return np.zeros((0, 30))
        out = np.empty((len(requests), len(requests[0].candidates)))
        parsed: list[int | None] = []
        for row, req in enumerate(requests):
            hist = [self.titles[i] for i in req.history]
            cands = [self.titles[c] for c in req.candidates]
            answers = [self.enc.answer(t) for t in cands]
            prompt = rank_prompt(self.enc, hist, cands, self.max_len,
                                 max(len(a) for a in answers), self.max_history)
            if self.mode == "score":
                total, lengths = R.answer_logprobs(self.model, prompt.ids, answers,
                                                   self.sharing)
                out[row] = R.normalize(total, lengths, self.length_norm)
            else:
                gen = R.greedy_decode(self.model, prompt.ids, self.max_new_tokens,
                                      self.enc.eos)
                text = self.enc.tokenizer.decode(gen, skip_special_tokens=True)
                parsed.append(R.parse_answer(text, cands))
        if self.mode == "generate":
            out = R.generate_scores(parsed, out.shape[1])
            self.last_parsed = parsed
            self.info["invalid_rate"] = (
                float(np.mean([p is None for p in parsed])) if parsed else 0.0)
        return out

    def _evaluate(self, valid: Validation) -> float:
        return valid.evaluate(self._rank)

    def _remember(self, data: TrainData) -> None:
        seed_everything(self.seed)
        self.titles = dict(data.titles)

    def train_artifacts(self, data: TrainData) -> dict[str, Any]:
        """Build (or find in the workdir cache) everything fit() trains, with no
        validation step: what `python -m molorec.train` runs under a multi-GPU launcher,
        so that fit() afterwards only loads, selects and scores."""
        self._remember(data)
        return {"backbone": self._backbone(data)}

    def score(self, requests: Sequence[ScoreRequest]) -> np.ndarray:
        with torch.no_grad():
            return self._rank(requests)

    def describe(self) -> dict[str, Any]:
        return dict(self.info)


class Backbone(_LLMSystem):
    """The backbone zero-shot: the same prompts and ranking, no adapter."""

    name: ClassVar[str] = "Backbone"
    group: ClassVar[str] = "LLM-Based"
    profiles = PROFILES["backbone"]

    @property
    def label(self) -> str:
        return self.config["backbone"].get("label", self.name)  # e.g. Qwen2-7B

    def fit(self, data: TrainData, valid: Validation) -> None:
        self._load(self.train_artifacts(data)["backbone"])
        self.info["valid_ndcg@1"] = round(self._evaluate(valid), 4)


class TALLRec(_LLMSystem):
    """One LoRA on the target domain with a yes/no instruction per candidate; ranks by
    logit(Yes) - logit(No)."""

    name: ClassVar[str] = "TALLRec"
    group: ClassVar[str] = "LLM-Based"
    profiles = PROFILES["tallrec"]

    def train_artifacts(self, data: TrainData) -> dict[str, Any]:
        arts = super().train_artifacts(data)
        cfg = self.config["tallrec"]
        key = self._target_key(data, "tallrec", cfg)

        def make(enc: Encoder) -> list:
            return yes_no_examples(
                data.train, data.titles, enc, seed=self.seed, max_len=self.max_len,
                max_history=self.max_history,
                max_targets_per_user=cfg.get("max_targets_per_user"),
                negatives_per_target=cfg.get("negatives_per_target", 1))

        arts["tallrec"] = {lr: self._adapter("lora-tallrec", key, arts["backbone"], cfg,
                                             "tallrec", make, lr=lr)
                           for lr in _as_list(cfg["train"]["lr"])}
        return arts

    def fit(self, data: TrainData, valid: Validation) -> None:
        arts = self.train_artifacts(data)
        self.info["lr"], self.info["valid_ndcg@1"] = self._select_single(
            arts["backbone"], arts["tallrec"], valid)

    def _rank(self, requests: Sequence[ScoreRequest]) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("call fit() before score()")
        if not requests:
            return np.zeros((0, 30))
        yes, no = self.enc.word(YES), self.enc.word(NO)
        out = np.empty((len(requests), len(requests[0].candidates)))
        for row, req in enumerate(requests):
            prefix, suffixes, _ = yes_no_parts(
                self.enc, [self.titles[i] for i in req.history],
                [self.titles[c] for c in req.candidates], self.max_len, self.max_history)
            out[row] = R.yes_no_scores(self.model, prefix, suffixes, yes, no)
        return out


class _MoLoRecBase(_LLMSystem):
    group: ClassVar[str] = "Ours"

    def _specific_adapter(self, bb: B.Backbone, data: TrainData, lr: float) -> L.Adapter:
        cfg = self.config["specific"]
        key = self._target_key(data, "specific", cfg)
        return self._adapter("lora-specific", key, bb, cfg, "specific", lambda enc:
                             rank_examples(data.train, data.titles, enc, seed=self.seed,
                                           max_len=self.max_len, max_history=self.max_history,
                                           max_targets_per_user=cfg.get(
                                               "max_targets_per_user")), lr=lr)

    def _specific_adapters(self, bb: B.Backbone, data: TrainData) -> dict[float, L.Adapter]:
        return {lr: self._specific_adapter(bb, data, lr)
                for lr in _as_list(self.config["specific"]["train"]["lr"])}

    def _best_specific(self, bb: B.Backbone, adapters: dict[float, L.Adapter],
                       valid: Validation) -> L.Adapter:
        """With several learning rates, the adapter that alone scores best on validation."""
        if len(adapters) == 1:
            return next(iter(adapters.values()))
        lr, _ = self._select_single(bb, adapters, valid, "specific_valid_by_lr")
        self.info["specific_lr"] = lr
        return adapters[lr]


class MoLoRecG(_MoLoRecBase):
    """Stage 1 only: the domain-general LoRA (never sees the target domain's data)."""

    name: ClassVar[str] = "MoLoRec-G"
    profiles = PROFILES["molorec-g"]

    def train_artifacts(self, data: TrainData) -> dict[str, Any]:
        arts = super().train_artifacts(data)
        arts["general"] = self._general_adapter(arts["backbone"], data)
        return arts

    def fit(self, data: TrainData, valid: Validation) -> None:
        arts = self.train_artifacts(data)
        self._load(arts["backbone"], [arts["general"]]).merge()
        self.info["valid_ndcg@1"] = round(self._evaluate(valid), 4)


class MoLoRecS(_MoLoRecBase):
    """Stage 2 only: the domain-specific LoRA."""

    name: ClassVar[str] = "MoLoRec-S"
    profiles = PROFILES["molorec-s"]

    def train_artifacts(self, data: TrainData) -> dict[str, Any]:
        arts = super().train_artifacts(data)
        arts["specific"] = self._specific_adapters(arts["backbone"], data)
        return arts

    def fit(self, data: TrainData, valid: Validation) -> None:
        arts = self.train_artifacts(data)
        adapter = self._best_specific(arts["backbone"], arts["specific"], valid)
        self._load(arts["backbone"], [adapter]).merge()
        self.info["valid_ndcg@1"] = round(self._evaluate(valid), 4)


class MoLoRec(_MoLoRecBase):
    """General + specific LoRA mixed per layer (fixed, grid on validation, or
    entropy-guided on unlabeled test prompts), merged into the weights for inference."""

    name: ClassVar[str] = "MoLoRec"
    profiles = PROFILES["molorec"]

    def train_artifacts(self, data: TrainData) -> dict[str, Any]:
        arts = super().train_artifacts(data)
        arts["general"] = self._general_adapter(arts["backbone"], data)
        arts["specific"] = self._specific_adapters(arts["backbone"], data)
        return arts

    def fit(self, data: TrainData, valid: Validation) -> None:
        cfg = self.config["mixture"]
        method = cfg.get("method", "entropy")
        if method not in MIXTURE_METHODS:
            raise ValueError(f"mixture method must be one of {MIXTURE_METHODS}, got {method!r}")
        self.info["mixture_method"] = method
        arts = self.train_artifacts(data)
        bb = arts["backbone"]
        specific = self._best_specific(bb, arts["specific"], valid)
        self.mix = self._load(bb, [arts["general"], specific])
        self._adapted = False
        t0 = time.perf_counter()
        if method == "fixed":
            self.mix.set_weights(cfg["fixed"])
            self.mix.merge()
            self.info["valid_ndcg@1"] = round(self._evaluate(valid), 4)
        elif method == "grid":
            best, table = grid_search(self.mix, cfg["grid"], lambda: self._evaluate(valid))
            self.mix.merge()
            self.info["grid_valid"] = {f"{w:g}": round(v, 4) for w, v in table.items()}
            self.info["valid_ndcg@1"] = round(table[best], 4)
        else:
            self._select_entropy(valid)
        self.info.setdefault("seconds", {})["mixture_selection"] = round(
            time.perf_counter() - t0, 1)
        self._record_weights()

    # entropy-guided -----------------------------------------------------------------
    def _entropy_cfg(self) -> dict[str, Any]:
        return self.config["mixture"]["entropy"]

    def _prompts(self, requests: Sequence[ScoreRequest], n: int, seed: int) -> list:
        """Up to n unlabeled ranking prompts drawn (seeded) from `requests`."""
        pick = np.random.default_rng(seed).permutation(len(requests))[:n]
        out = []
        for j in sorted(pick):
            req = requests[j]
            cands = [self.titles[c] for c in req.candidates]
            reserve = max(len(self.enc.answer(t)) for t in cands)
            out.append(rank_prompt(self.enc, [self.titles[i] for i in req.history], cands,
                                   self.max_len, reserve, self.max_history).ids)
        return out

    def _learn(self, prompts: list, lr: float) -> list[float]:
        e = self._entropy_cfg()
        self.mix.set_weights(e.get("init", [0.5, 0.5]))
        with torch.enable_grad():
            return learn_entropy(self.mix, prompts, k=int(e.get("k", 3)), lr=lr,
                                 epochs=int(e.get("epochs", 5)),
                                 batch_size=int(e.get("batch_size", 60)), eos=self.enc.eos,
                                 seed=self.seed,
                                 micro_batch_size=e.get("micro_batch_size"))

    def _select_entropy(self, valid: Validation) -> None:
        """Choose the learning rate and prompt count on validation: learn theta on
        unlabeled validation prompts, score the validation candidates with the merged
        result, keep the best; the test prompts are only used later, unlabeled."""
        e = self._entropy_cfg()
        results = {}
        best = None
        for n in _as_list(e.get("n_prompts", 50)):
            prompts = self._prompts(valid.requests, int(n), self.seed)
            for lr in _as_list(e["lr"]):
                t0 = time.perf_counter()
                hist = self._learn(prompts, float(lr))
                learn_s = time.perf_counter() - t0
                self.mix.merge()
                t0 = time.perf_counter()
                v = self._evaluate(valid)
                eval_s = time.perf_counter() - t0
                self.mix.unmerge()
                results[f"n={n} lr={lr:g}"] = {"valid_ndcg@1": round(v, 4),
                                               "entropy": [round(x, 4) for x in hist],
                                               "learn_s": round(learn_s, 1),
                                               "eval_s": round(eval_s, 1)}
                if best is None or v > best[0]:
                    best = (v, int(n), float(lr))
        self.info["entropy_selection"] = results
        self.info["entropy_lr"], self.info["entropy_n_prompts"] = best[2], best[1]
        self.info["valid_ndcg@1"] = round(best[0], 4)
        self.mix.set_weights(e.get("init", [0.5, 0.5]))

    def _adapt(self, requests: Sequence[ScoreRequest]) -> None:
        """Entropy-guided theta on unlabeled test prompts, then merged (once)."""
        t0 = time.perf_counter()
        prompts = self._prompts(requests, self.info["entropy_n_prompts"], self.seed + 1)
        hist = self._learn(prompts, self.info["entropy_lr"])
        self.mix.merge()
        self._adapted = True
        self.info["test_entropy"] = [round(x, 4) for x in hist]
        self.info.setdefault("seconds", {})["entropy_test_time"] = round(
            time.perf_counter() - t0, 1)
        self._record_weights()

    def _record_weights(self) -> None:
        self.info["adapters_order"] = list(self.mix.names)
        self.info["weights_by_block"] = self.mix.weights_by_block()
        self.info["weights_by_layer"] = self.mix.weights_by_layer()

    def score(self, requests: Sequence[ScoreRequest]) -> np.ndarray:
        """Entropy mode learns theta on the first call's requests (unlabeled), once."""
        if self.info.get("mixture_method") == "entropy" and not self._adapted:
            self._adapt(requests)
        return super().score(requests)


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]
