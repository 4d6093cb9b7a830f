"""Per-profile settings of the LLM rows (what `System.profiles` hands each system).

paper: the paper's settings on Qwen2-7B-Instruct (LoRA rank 16, alpha 32, dropout 0.05 on
all linear layers, batch 128, learning rate chosen on validation from {1e-4, 2e-4}, 2
epochs general / 4 specific, entropy on the first 3 answer tokens of 50 or 100 unlabeled
test prompts, batch 60). cpu / smoke: the same code paths on a tiny Qwen2 pretrained
here, with fewer examples, shorter prompts and higher learning rates (a tiny model
from scratch needs them). Settings that decide a shared artifact (backbone, general and
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
        "backbone": {**_TINY, "vocab_size": 2000, "hidden_size": 64, "num_attention_heads": 1,
                     "num_key_value_heads": 1, "intermediate_size": 256, "num_hidden_layers": 2,
                     "pretrain": {"epochs": 1, "lr": 2e-3, "batch_size": 16, "seq_len": 256,
                                  "max_tokens": None, "seed": 0}},
        "prompt": {"max_len": 768, "max_history": 10},
        "ranking": {"mode": "score", "length_norm": "mean", "sharing": "packed",
                    "max_new_tokens": 48},
        "lora": LORA,
        "general": {"max_targets_per_user": 2,
                    "train": {"epochs": 2, "lr": 2e-3, "batch_size": 32,
                              "micro_batch_size": 16}},
        # as in the paper profile, the target-domain adapters (specific, TALLRec) take
        # their learning rate from two values by validation NDCG@1
        "specific": {"max_targets_per_user": 2,
                     "train": {"epochs": 4, "lr": [2e-3, 6e-3], "batch_size": 32,
                               "micro_batch_size": 16}},
        "mixture": {"method": "entropy", "fixed": [0.5, 0.5],
                    "grid": [0.0, 0.25, 0.5, 0.75, 1.0],
                    "entropy": {"k": 3, "n_prompts": 50, "lr": [0.05, 0.2], "epochs": 5,
                                "batch_size": 25, "init": [0.5, 0.5]}},
        "tallrec": {"max_targets_per_user": 2, "negatives_per_target": 1,
                    "train": {"epochs": 4, "lr": [2e-3, 6e-3], "batch_size": 32,
                              "micro_batch_size": 32}},
    },
    "paper": {
        "backbone": {"kind": "pretrained", "label": "Qwen2-7B", "path": "Qwen/Qwen2-7B-Instruct",
                     "dtype": "bfloat16", "chat": True},
        "prompt": {"max_len": 2048, "max_history": 20},
        # on a GPU the repeated-cache batch beats the packed block mask (BENCHMARKS.md)
        "ranking": {"mode": "score", "length_norm": "mean", "sharing": "batch",
                    "max_new_tokens": 64},
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
    "backbone": ("backbone", "prompt", "ranking"),
    "tallrec": ("backbone", "prompt", "lora", "tallrec"),
    "molorec-g": ("backbone", "prompt", "ranking", "lora", "general"),
    "molorec-s": ("backbone", "prompt", "ranking", "lora", "specific"),
    "molorec": ("backbone", "prompt", "ranking", "lora", "general", "specific", "mixture"),
}

PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    system: {prof: {p: copy.deepcopy(COMMON[prof][p]) for p in parts} for prof in COMMON}
    for system, parts in _PARTS.items()
}
