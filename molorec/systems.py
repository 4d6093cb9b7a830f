"""The LLM-based rows of the tables: the backbone zero-shot, TALLRec, MoLoRec-G/-S, MoLoRec.

Every row builds prompts (molorec.template), trains or finds its adapters in the
workdir cache (molorec.artifacts), and asks an LLM backend (molorec.backends: `hf`, or
`vllm` where installed) to score or generate with one adapter served at a time; the
mixture is served as one exact concatenated adapter. Every hyperparameter choice is
made on validation candidates (molorec.selection); test requests are used unlabeled,
and only by the entropy-guided mixture.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from bench.api import ScoreRequest, System, TrainData, Validation
from molorec import ranking as R
from molorec import selection as SEL
from molorec.artifacts import ArtifactBuilder
from molorec.backends import AnswerRequest, ChoiceRequest, LLMBackend, backend_class, resolve
from molorec.profiles import PROFILES
from molorec.template import NO, YES, rank_prompt, yes_no_parts
from molorec.train_loop import seed_everything

MIXTURE_METHODS = ("fixed", "grid", "entropy")
VOCABS = ("full", "titles")


class _LLMSystem(System):
    """Prompting, the backend and ranking, shared by every LLM row."""

    group: ClassVar[str] = "LLM-Based"
    multithreaded: ClassVar[bool] = True  # the runner gives it every core
    lora_ranks: ClassVar[int] = 1  # adapters summed into the one served (vLLM's max rank)
    uses_gpu: ClassVar[bool] = True  # a parallel run gives each cell one GPU worker slot
    full_ranking_reason: ClassVar[str] = "it scores each candidate with a language-model pass"

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
        self.vocab_mode = rank.get("vocab", "full")
        if self.vocab_mode not in VOCABS:
            raise ValueError(f"ranking vocab must be one of {VOCABS}, got {self.vocab_mode!r}")
        self.backend_name = rank.get("backend", "hf")
        self.max_new_tokens = int(rank.get("max_new_tokens", 64))
        self.info: dict[str, Any] = {"ranking_mode": self.mode}
        self._invalid = (0, 0)  # generate mode: (answers naming no candidate, answers)
        self.last_parsed: list | None = None  # generate mode: the last batch's parsed answers
        self.artifacts = ArtifactBuilder(self.config, seed, self.workdir, self.info)
        self.prompting = self.artifacts.prompting
        if self.mode == "generate" and not self.prompting.list_candidates:
            raise ValueError("generate mode needs the candidates in the prompt "
                             "(prompt.list_candidates: true)")
        self.metric = self.config.get("selection", {}).get("metric", "NDCG@1")
        self.valid_key = f"valid_{self.metric.lower()}"  # what describe() reports
        self.backend: LLMBackend | None = None
        self.titles: dict[str, str] = {}
        self.vocab: torch.Tensor | None = None

    @classmethod
    def configure(cls, config: dict[str, Any], backbone: str | None = None,
                  backbone_label: str | None = None) -> dict[str, Any]:
        """`--backbone` replaces the profile's backbone; either way the model is found
        and its sha256 pinned into the config (molorec.backbone.pin), so the cell key
        covers the weights, not only the settings."""
        from molorec import backbone as B

        cfg = dict(config)
        if backbone is not None:
            cfg["backbone"] = B.from_option(backbone, backbone_label, cfg["backbone"])
        elif backbone_label is not None:
            cfg["backbone"] = {**cfg["backbone"], "label": backbone_label}
        cfg["backbone"] = B.pin(cfg["backbone"], env=backbone is None)
        return cfg

    @property
    def enc(self):
        return self.artifacts.enc

    # -- artifacts and the backend ----------------------------------------------------
    def train_artifacts(self, data: TrainData) -> dict[str, Any]:
        """Build (or find in the workdir cache) everything fit() trains, with no
        validation step: what `python -m molorec.train` runs under a multi-GPU launcher,
        so that fit() afterwards only loads, selects and scores."""
        seed_everything(self.seed)
        self.titles = dict(data.titles)
        return {"backbone": self.artifacts.ensure_backbone(data)}

    def _backend_options(self, name: str) -> dict[str, Any]:
        """Engine settings only vLLM takes: the largest adapter rank served (the mixture
        is one LoRA of rank r_g + r_s), the longest sequence, `ranking.vllm`."""
        if name != "vllm":
            return {}
        if self.vocab_mode != "full":
            raise ValueError("ranking.backend: vllm scores over the whole vocabulary only; "
                             "set ranking.vocab: full, or use ranking.backend: hf")
        rank = self.config.get("ranking", {})
        r = int(self.config.get("lora", {}).get("r", 0)) * self.lora_ranks
        return {"max_lora_rank": r, "max_model_len": self.prompting.max_len
                + self.max_new_tokens, **rank.get("vllm", {})}

    def _start_backend(self) -> LLMBackend:
        if self.backend is None:
            t0 = time.perf_counter()
            bb = self.artifacts.backbone
            name = resolve(self.backend_name)
            self.backend = backend_class(name)(bb, sharing=self.sharing,
                                               **self._backend_options(name))
            self.info.update(self.backend.describe())
            self.info.setdefault("seconds", {})["backend_start"] = round(
                time.perf_counter() - t0, 1)
            if self.vocab_mode == "titles":
                self.vocab = self._title_vocab()
        return self.backend

    def _title_vocab(self) -> torch.Tensor:
        """Every token of every item's answer (its title, then end-of-sequence): scoring
        normalizes over these, the tokens an answer naming an item can consist of."""
        tokens = {t for title in self.titles.values() for t in self.enc.answer(title)}
        self.info["vocab_size"] = len(tokens)
        return torch.tensor(sorted(tokens))

    def _serve(self, adapter: Path | None) -> None:
        self._start_backend().set_adapter(adapter)

    def _evaluate(self, valid: Validation) -> float:
        return SEL.evaluate(valid, self._rank, self.metric)

    # -- ranking ---------------------------------------------------------------------
    def _prompt(self, req: ScoreRequest) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
        cands = [self.titles[c] for c in req.candidates]
        answers = [self.enc.answer(t) for t in cands]
        p = self.prompting
        prompt = rank_prompt(self.enc, [self.titles[i] for i in req.history], cands,
                             p.max_len, max(len(a) for a in answers), p.max_history,
                             p.list_candidates)
        return prompt.ids, answers

    def _rank(self, requests: Sequence[ScoreRequest]) -> np.ndarray:
        """(n, n_candidates) scores with the adapter now served."""
        if self.backend is None:
            raise RuntimeError("call fit() before score()")
        if not requests:
            return np.zeros((0, 0))
        built = [self._prompt(r) for r in requests]
        if self.mode == "score":
            totals = self.backend.answer_logprobs(
                [AnswerRequest(p, tuple(a)) for p, a in built], self.vocab)
            lengths = [np.array([len(x) for x in a], dtype=np.float64) for _, a in built]
            return np.stack([R.normalize(t, n, self.length_norm)
                             for t, n in zip(totals, lengths, strict=True)])
        gens = self.backend.generate([p for p, _ in built], self.max_new_tokens, self.enc.eos)
        parsed = [R.parse_answer(self.enc.tokenizer.decode(g, skip_special_tokens=True),
                                 [self.titles[c] for c in req.candidates])
                  for g, req in zip(gens, requests, strict=True)]
        self.last_parsed = parsed
        return R.generate_scores(parsed, len(requests[0].candidates))

    def score(self, requests: Sequence[ScoreRequest]) -> np.ndarray:
        """Test scores; in generate mode `invalid_rate` counts every batch of the cell
        (validation passes are not counted)."""
        self.last_parsed = None
        with torch.no_grad():
            scores = self._rank(requests)
        if self.last_parsed is not None and requests:
            bad, total = self._invalid
            self._invalid = (bad + sum(p is None for p in self.last_parsed),
                             total + len(requests))
            self.info["invalid_rate"] = self._invalid[0] / self._invalid[1]
        return scores

    def _report_valid(self, valid: Validation) -> None:
        """Record the validation value of the served model for a row that chose nothing
        (unless selection.report_valid is false: a CPU budget skips that pass)."""
        if self.config.get("selection", {}).get("report_valid", True):
            self.info[self.valid_key] = round(self._evaluate(self._selection_valid(valid)), 4)

    def _selection_valid(self, valid: Validation) -> Validation:
        """The validation requests every choice of this row is made on (a seeded subset
        where the profile sets selection.valid_users)."""
        n = self.config.get("selection", {}).get("valid_users")
        sub = SEL.valid_subset(valid, n, self.seed)
        self.info["selection_valid_users"] = len(sub.requests)
        return sub

    def _select_adapter(self, paths: dict[float, Path], valid: Validation,
                        record: str) -> tuple[float, float]:
        """Serve each adapter, score validation, keep the best served. Returns
        (learning rate, validation NDCG@1)."""
        results = {}
        for lr, path in paths.items():
            self._serve(path)
            results[lr] = self._evaluate(valid)
        self.info[record] = {f"{lr:g}": round(v, 4) for lr, v in results.items()}
        best = SEL.first_best(results)
        if best != list(paths)[-1]:
            self._serve(paths[best])
        return best, round(results[best], 4)

    def describe(self) -> dict[str, Any]:
        return {**self.info, "caption_note": self.caption_note()}

    def caption_note(self) -> str:
        """What the table caption says about the LLM rows (equal for rows that agree)."""
        backend = f"{self.info.get('backend', self.backend_name)} backend"
        if self.info.get("vllm"):
            backend = f"vllm {self.info['vllm']} backend"
        if self.info.get("compute"):
            backend += f", {self.info['compute']}"
        how = {"score": "score mode: mean log-likelihood per answer token of each title"
                        + (", softmax over the tokens of item titles"
                           if self.vocab_mode == "titles" else ""),
               "generate": "generate mode: greedy decoding parsed against the candidate "
                           "titles; an answer naming no candidate is a miss"}[self.mode]
        if sha := self.info.get("backbone_sha256"):
            backend = f"weights sha256 {sha[:12]}, {backend}"
        return (f"LLM rows run on {self.info.get('backbone', '?')} ({backend}) and rank the "
                f"candidates in {how}; TALLRec by logit(Yes) - logit(No)")

    def close(self) -> None:
        """Free the backends (a vLLM engine holds its memory until closed)."""
        for attr in ("backend", "_hf"):
            if (backend := getattr(self, attr, None)) is not None:
                backend.close()
                setattr(self, attr, None)


class Backbone(_LLMSystem):
    """The backbone zero-shot: the same prompts and ranking, no adapter."""

    name: ClassVar[str] = "Backbone"
    group: ClassVar[str] = "LLM-Based"
    lora_ranks: ClassVar[int] = 0
    profiles = PROFILES["backbone"]

    @property
    def label(self) -> str:
        return self.config["backbone"].get("label", self.name)  # e.g. Gemma3-270M

    def fit(self, data: TrainData, valid: Validation) -> None:
        self.train_artifacts(data)
        self._serve(None)
        self._report_valid(valid)


class TALLRec(_LLMSystem):
    """One LoRA on the target domain with a yes/no instruction per candidate; ranks by
    logit(Yes) - logit(No)."""

    name: ClassVar[str] = "TALLRec"
    group: ClassVar[str] = "LLM-Based"
    profiles = PROFILES["tallrec"]

    def train_artifacts(self, data: TrainData) -> dict[str, Any]:
        arts = super().train_artifacts(data)
        arts["tallrec"] = self.artifacts.tallrec(data)
        return arts

    def fit(self, data: TrainData, valid: Validation) -> None:
        arts = self.train_artifacts(data)
        paths = arts["tallrec"]
        if len(paths) == 1:  # nothing to choose
            (self.info["lr"], path), = paths.items()
            self._serve(path)
            self._report_valid(valid)
            return
        self.info["lr"], self.info[self.valid_key] = self._select_adapter(
            paths, self._selection_valid(valid), "valid_by_lr")

    def _rank(self, requests: Sequence[ScoreRequest]) -> np.ndarray:
        if self.backend is None:
            raise RuntimeError("call fit() before score()")
        if not requests:
            return np.zeros((0, 0))
        p = self.prompting
        parts = []
        for req in requests:
            prefix, suffixes, _ = yes_no_parts(
                self.enc, [self.titles[i] for i in req.history],
                [self.titles[c] for c in req.candidates], p.max_len, p.max_history)
            parts.append(ChoiceRequest(prefix, tuple(suffixes)))
        scores = self.backend.yes_no(parts, self.enc.word(YES), self.enc.word(NO))
        return np.stack(scores)


class _MoLoRecBase(_LLMSystem):
    group: ClassVar[str] = "Ours"

    def _best_specific(self, paths: dict[float, Path], valid: Validation
                       ) -> tuple[Path, float | None]:
        """With several learning rates, the adapter that alone scores best on validation
        (and its value); with one, that adapter (None)."""
        if len(paths) == 1:
            return next(iter(paths.values())), None
        lr, value = self._select_adapter(paths, valid, "specific_valid_by_lr")
        self.info["specific_lr"] = lr
        return paths[lr], value


class MoLoRecG(_MoLoRecBase):
    """Stage 1 only: the domain-general LoRA (never sees the target domain's data)."""

    name: ClassVar[str] = "MoLoRec-G"
    profiles = PROFILES["molorec-g"]

    def train_artifacts(self, data: TrainData) -> dict[str, Any]:
        arts = super().train_artifacts(data)
        arts["general"] = self.artifacts.general(data)
        return arts

    def fit(self, data: TrainData, valid: Validation) -> None:
        arts = self.train_artifacts(data)
        self._serve(arts["general"])
        self._report_valid(valid)


class MoLoRecS(_MoLoRecBase):
    """Stage 2 only: the domain-specific LoRA."""

    name: ClassVar[str] = "MoLoRec-S"
    profiles = PROFILES["molorec-s"]

    def train_artifacts(self, data: TrainData) -> dict[str, Any]:
        arts = super().train_artifacts(data)
        arts["specific"] = self.artifacts.specific(data)
        return arts

    def fit(self, data: TrainData, valid: Validation) -> None:
        arts = self.train_artifacts(data)
        path, value = self._best_specific(arts["specific"], self._selection_valid(valid))
        self._serve(path)
        if value is None:
            self._report_valid(valid)
        else:
            self.info[self.valid_key] = value


class MoLoRec(_MoLoRecBase):
    """General + specific LoRA mixed per layer (fixed, grid on validation, or
    entropy-guided on unlabeled test prompts), served as one concatenated adapter."""

    name: ClassVar[str] = "MoLoRec"
    profiles = PROFILES["molorec"]
    lora_ranks: ClassVar[int] = 2
    # 2: the entropy stopping rule scores the theta after the last step and can keep it
    version: ClassVar[int] = 2

    def train_artifacts(self, data: TrainData) -> dict[str, Any]:
        arts = super().train_artifacts(data)
        arts["general"] = self.artifacts.general(data)
        arts["specific"] = self.artifacts.specific(data)
        return arts

    def fit(self, data: TrainData, valid: Validation) -> None:
        cfg = self.config["mixture"]
        method = cfg.get("method", "entropy")
        if method not in MIXTURE_METHODS:
            raise ValueError(f"mixture method must be one of {MIXTURE_METHODS}, got {method!r}")
        self.info["mixture_method"] = method
        arts = self.train_artifacts(data)
        sub = self._selection_valid(valid)
        self.parts = (arts["general"], self._best_specific(arts["specific"], sub)[0])
        self._adapted = False
        t0 = time.perf_counter()
        if method == "fixed":
            self._serve_weights(self._uniform(cfg["fixed"]))
            self.info[self.valid_key] = round(self._evaluate(sub), 4)
        elif method == "grid":
            results = {}
            for w in cfg["grid"]:
                if not 0.0 <= w <= 1.0:
                    raise ValueError(f"grid weights must be in [0, 1], got {w}")
                self._serve_weights(self._uniform([w, 1.0 - w]))
                results[float(w)] = self._evaluate(sub)
            best = SEL.first_best(results)
            self._serve_weights(self._uniform([best, 1.0 - best]))
            self.info["grid_valid"] = {f"{w:g}": round(v, 4) for w, v in results.items()}
            self.info[self.valid_key] = round(results[best], 4)
        else:
            self._select_entropy(sub)
        self.info.setdefault("seconds", {})["mixture_selection"] = round(
            time.perf_counter() - t0, 1)

    def _uniform(self, w: Sequence[float]) -> dict[str, list[float]]:
        from molorec.adapters import load_peft, uniform_weights

        total = float(sum(w))
        return uniform_weights([load_peft(p) for p in self.parts], [x / total for x in w])

    def _serve_weights(self, weights: dict[str, list[float]]) -> None:
        """Serve the [general, specific] mixture with these per-module weights."""
        self._serve(self.artifacts.mixture(*self.parts, weights))
        self.info["adapters_order"] = ["general", "specific"]
        self.info["weights_by_layer"] = {m: [round(float(x), 4) for x in w]
                                         for m, w in sorted(weights.items(), key=_layer_key)}
        self.info["weights_by_block"] = SEL.by_block(weights)

    # entropy-guided -----------------------------------------------------------------
    def _entropy_cfg(self) -> dict[str, Any]:
        return self.config["mixture"]["entropy"]

    def _prompts(self, requests: Sequence[ScoreRequest], n: int, seed: int) -> list:
        """Up to n unlabeled ranking prompts drawn (seeded) from `requests`."""
        pick = np.random.default_rng(seed).permutation(len(requests))[:n]
        return [self._prompt(requests[j])[0] for j in sorted(pick)]

    def _learn(self, prompts: list, lr: float) -> tuple[list[float], dict[str, list[float]]]:
        """Entropy-guided theta on `prompts`; returns (entropy per epoch, weights)."""
        from molorec.adapters import load_peft
        from molorec.mixture import Mixture, learn_entropy

        e = self._entropy_cfg()
        trainer = self._trainer()
        mix = Mixture(trainer.trainer_model(), [load_peft(p) for p in self.parts])
        try:
            mix.set_weights(e.get("init", [0.5, 0.5]))
            with torch.enable_grad():
                hist = learn_entropy(mix, prompts, k=int(e.get("k", 3)), lr=lr,
                                     epochs=int(e.get("epochs", 5)),
                                     batch_size=int(e.get("batch_size", 60)), eos=self.enc.eos,
                                     seed=self.seed, micro_batch_size=e.get("micro_batch_size"),
                                     stop_on_rise=bool(e.get("stop_on_rise", False)),
                                     compute=trainer.compute)
            weights = {m: layer.weights().detach().tolist() for m, layer in mix.layers.items()}
        finally:
            mix.remove()
        return hist, weights

    def _entropy_summary(self, hist: list[float]) -> dict[str, Any]:
        """The entropy trajectory, the epochs run, and after how many epochs the kept
        theta stood (the stopping rule: the last entry scores the theta after the last
        step, `molorec.mixture.learn_entropy`)."""
        stop = bool(self._entropy_cfg().get("stop_on_rise", False))
        epochs = len(hist) - int(stop)
        return {"entropy": [round(x, 4) for x in hist], "epochs_used": epochs,
                "kept_after_epochs": int(np.argmin(hist)) if stop else epochs}

    def _trainer(self):
        """The transformers backend theta is learned on: the serving one if it is one."""
        backend = self._start_backend()
        if hasattr(backend, "trainer_model"):
            return backend
        if getattr(self, "_hf", None) is None:
            self._hf = backend_class("hf")(self.artifacts.backbone, sharing=self.sharing)
        return self._hf

    def _select_entropy(self, valid: Validation) -> None:
        """Choose the learning rate and prompt count on validation: learn theta on
        unlabeled validation prompts, score the validation candidates with the result,
        keep the best; the test prompts are only used later, unlabeled."""
        e = self._entropy_cfg()
        results, best = {}, None
        for n in SEL.as_list(e.get("n_prompts", 50)):
            prompts = self._prompts(valid.requests, int(n), self.seed)
            for lr in SEL.as_list(e["lr"]):
                t0 = time.perf_counter()
                hist, weights = self._learn(prompts, float(lr))
                learn_s = time.perf_counter() - t0
                self._serve_weights(weights)
                t0 = time.perf_counter()
                v = self._evaluate(valid)
                results[f"n={n} lr={lr:g}"] = {
                    self.valid_key: round(v, 4), **self._entropy_summary(hist),
                    "learn_s": round(learn_s, 1),
                    "eval_s": round(time.perf_counter() - t0, 1),
                    "weights_by_block": SEL.by_block(weights)}
                if best is None or v > best[0]:
                    best = (v, int(n), float(lr))
        self.info["entropy_selection"] = results
        self.info["entropy_lr"], self.info["entropy_n_prompts"] = best[2], best[1]
        self.info[self.valid_key] = round(best[0], 4)

    def _adapt(self, requests: Sequence[ScoreRequest]) -> None:
        """Entropy-guided theta on unlabeled test prompts, then served (once)."""
        t0 = time.perf_counter()
        prompts = self._prompts(requests, self.info["entropy_n_prompts"], self.seed + 1)
        hist, weights = self._learn(prompts, self.info["entropy_lr"])
        self._serve_weights(weights)
        self._adapted = True
        self.info["test_entropy"] = [round(x, 4) for x in hist]
        self.info["test_entropy_kept_after_epochs"] = self._entropy_summary(hist)[
            "kept_after_epochs"]
        self.info.setdefault("seconds", {})["entropy_test_time"] = round(
            time.perf_counter() - t0, 1)

    def score(self, requests: Sequence[ScoreRequest]) -> np.ndarray:
        """Entropy mode learns theta on the first call's requests (unlabeled), once."""
        if self.info.get("mixture_method") == "entropy" and not self._adapted:
            self._adapt(requests)
        return super().score(requests)


def _layer_key(item: tuple[str, Any]) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in item[0].split("."))
