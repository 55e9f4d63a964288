"""Load a backbone's causal LM, and of a multimodal wrapper only its language model.

RecursiveMAS uses a backbone's text path alone (decoder, input embeddings, LM head). A wrapper checkpoint such as
Gemma-3-4B's (``Gemma3ForConditionalGeneration``) also holds a vision tower that would sit in memory and never run,
so when the config has a separate text config we load the text model class from the same files, renaming the
language model's keys onto it. If that leaves any weight missing (a checkpoint layout we do not know), the whole
wrapper is loaded instead, and the unused parameters are reported.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger("recursivemas")
_EMBED, _HEAD = "embed_tokens.weight", "lm_head.weight"


def load_causal_lm(path: str, dtype: torch.dtype, name: str) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    text = config.get_text_config()
    if text is not config:
        mapping = _text_key_mapping(path)
        if mapping is not None:
            model, info = AutoModelForCausalLM.from_pretrained(path, config=text, dtype=dtype, key_mapping=mapping,
                                                               output_loading_info=True)
            if not info["missing_keys"]:
                log.info("backbone %s: loaded the language model of %s; the rest (the vision tower) is not loaded",
                         name, type(config).__name__)
                return model
            log.info("backbone %s: the text model would miss %d weights; loading the whole %s", name,
                     len(info["missing_keys"]), type(config).__name__)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    unused = _beside_the_text_path(model)
    if unused:
        log.info("backbone %s: %s is loaded whole; its %s parameters outside the language model (the vision "
                 "tower) are in memory but never run", name, type(model).__name__, f"{unused:,}")
    return model


def _text_key_mapping(path: str) -> dict[str, str] | None:
    """Renames from the checkpoint's language-model keys (``language_model.model.``, ``model.language_model.``,
    ...) onto a text model's (``model.``, ``lm_head.``); None when the checkpoint's keys cannot be read here."""
    keys = _checkpoint_keys(path)
    embeds = [k for k in keys if k.endswith(_EMBED) and "vision" not in k]
    if len(embeds) != 1:
        return None
    mapping = {"^" + re.escape(embeds[0][: -len(_EMBED)]): "model."}
    heads = [k for k in keys if k.endswith(_HEAD)]
    if len(heads) == 1 and heads[0] != _HEAD:
        mapping["^" + re.escape(heads[0][: -len(_HEAD)]) + r"lm_head\."] = "lm_head."
    return mapping


def _checkpoint_keys(path: str) -> list[str]:
    folder = Path(path)
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(path, local_files_only=True))
        except Exception:  # not in the local cache: let from_pretrained resolve (and load) it whole
            return []
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return list(json.loads(index.read_text())["weight_map"])
    from safetensors import safe_open

    keys = []
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            keys.extend(f.keys())
    return keys


def _beside_the_text_path(model: nn.Module) -> int:
    """Parameters of a multimodal wrapper that the text path (decoder, input embeddings, LM head) does not use."""
    used = {id(p) for part in (model.get_decoder(), model.get_input_embeddings(), model.get_output_embeddings())
            if part is not None for p in part.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in used)
