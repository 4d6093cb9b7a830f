"""Tiny random causal LMs of the architectures the LLM rows must run exactly."""

from __future__ import annotations

import torch


def qwen2(vocab: int = 300, layers: int = 2):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=layers, num_attention_heads=1, num_key_value_heads=1,
                      head_dim=64, max_position_embeddings=512, tie_word_embeddings=True)
    return Qwen2ForCausalLM(cfg).eval()


def gemma3(vocab: int = 300, window: int = 16, softcap: float | None = 5.0):
    """Gemma-3's layout (sliding-window layers around a global one, final-logit
    soft-capping when `softcap` is set) with a window far shorter than our prompts."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=window,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        final_logit_softcapping=softcap, max_position_embeddings=512)
    return Gemma3ForCausalLM(cfg).eval()


ARCHITECTURES = {"qwen2": qwen2, "gemma3": gemma3}
