"""Tiny random-weight models and byte-level tokenizers, built offline in a second, for tests without weights."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM, Gemma3Config, Gemma3TextConfig, GPT2Config, LlamaConfig, MistralConfig,
    PreTrainedTokenizerFast, Qwen2Config, Qwen3_5TextConfig, Qwen3Config, SiglipVisionConfig,
)

from recursivemas.engine import BackboneEngine

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<pad>", "<bos>", "<eos>", "<|im_start|>", "<|im_end|>"]


def byte_tokenizer(chat: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: 256 byte tokens plus a few specials, so any text round-trips."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for symbol in sorted(alphabet):
        vocab[symbol] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>",
        eos_token="<|im_end|>" if chat else "<eos>", additional_special_tokens=SPECIALS[3:],
    )
    if chat:
        tok.chat_template = CHATML
    return tok


VOCAB = len(SPECIALS) + 256


def tiny_config(family: str, context: int = 2048):
    common = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    if family == "llama":
        return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=context, **common)
    if family == "qwen2":
        return Qwen2Config(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=context, **common)
    if family == "gemma3":
        return Gemma3TextConfig(hidden_size=40, intermediate_size=80, num_hidden_layers=3, num_attention_heads=2,
                                num_key_value_heads=1, head_dim=16, sliding_window=16,
                                layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                                max_position_embeddings=context, **common)
    if family == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=context, vocab_size=VOCAB,
                          bos_token_id=1, eos_token_id=2)
    if family == "qwen3":
        return Qwen3Config(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=12, max_position_embeddings=context, **common)
    if family == "mistral":
        return MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=context, **common)
    if family == "qwen3_5":  # hybrid: gated-delta-rule linear attention in 3 of 4 layers, as the released agents
        return Qwen3_5TextConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                                 num_key_value_heads=2, head_dim=12, linear_num_key_heads=2, linear_num_value_heads=4,
                                 linear_key_head_dim=12, linear_value_head_dim=12, linear_conv_kernel_dim=4,
                                 layer_types=["linear_attention"] * 3 + ["full_attention"],
                                 max_position_embeddings=context, **common)
    if family == "gemma3_mm":  # the multimodal wrapper (Gemma3ForConditionalGeneration): no top-level hidden_size
        text = Gemma3TextConfig(hidden_size=40, intermediate_size=80, num_hidden_layers=3, num_attention_heads=2,
                                num_key_value_heads=1, head_dim=16, sliding_window=16,
                                layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                                max_position_embeddings=context, **common)
        vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    image_size=28, patch_size=14)
        return Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, tie_word_embeddings=False)
    raise ValueError(family)


FAMILIES = ["llama", "qwen2", "gemma3", "gpt2", "qwen3", "mistral", "qwen3_5", "gemma3_mm"]


def tiny_engine(family: str = "llama", chat: bool = True, seed: int = 0, context: int = 2048) -> BackboneEngine:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, context), dtype=torch.float32)
    return BackboneEngine(model, byte_tokenizer(chat=chat), name=f"tiny-{family}")


def save_tiny(path, family: str = "llama", chat: bool = True, seed: int = 0) -> str:
    """Write a tiny model + tokenizer dir, loadable like any local model path."""
    engine = tiny_engine(family, chat, seed)
    engine.model.save_pretrained(path)
    engine.tokenizer.save_pretrained(path)
    return str(path)


def save_tiny_pair(root) -> dict[str, str]:
    """Two model dirs of different families and widths, the usual backbones "a" (Llama 64) and "b" (Qwen2 48)."""
    return {"a": save_tiny(root / "llama", "llama"), "b": save_tiny(root / "qwen2", "qwen2", chat=False)}


def write_pair_topology(root, rounds: int = 1, latent_steps: int = 2, max_new_tokens: int = 4, name: str = "seq"):
    """A planner (Llama) -> solver (Qwen2) topology over a fresh tiny pair, as YAML: what the Serve tests serve."""
    import yaml

    backbones = {b: {"model": path, "num_cpus": 0.25} for b, path in save_tiny_pair(root).items()}
    doc = {"name": name, "backbones": backbones, "pattern": "sequential", "rounds": rounds,
           "latent_steps": latent_steps, "generation": {"max_new_tokens": max_new_tokens},
           "agents": [{"name": "planner", "backbone": "a"}, {"name": "solver", "backbone": "b"}]}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path
