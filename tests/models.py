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


CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% endif %}")


def save_checkpoint(out, texts, seed: int = 0, vocab_size: int = 1200, chat: bool = False,
                    dtype: torch.dtype = torch.float32, max_positions: int = 1024):
    """A tiny Qwen2 checkpoint directory with its tokenizer (trained on `texts`), as a
    user would give it to --backbone: equal `vocab_size` and `texts` give equal configs
    and tokenizers whatever the `seed`, which only changes the weights."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from molorec.backbone import train_tokenizer
    from molorec.template import NO, YES, template_texts

    tok = train_tokenizer([*texts, *template_texts(), YES, NO] * 3, vocab_size)
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1,
                      head_dim=64, max_position_embeddings=max_positions,
                      tie_word_embeddings=True,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = Qwen2ForCausalLM(cfg).to(dtype)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
