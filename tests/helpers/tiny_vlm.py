"""Tiny random-weight Idefics3 (SmolVLM) checkpoints for tests, in the Hugging Face layout.

``tiny_idefics3_dir(path, **overrides) -> str`` writes ``config.json`` + ``*.safetensors``,
``generation_config.json``, the tokenizer (the tiny byte-level BPE of ``tiny_models`` plus the
Idefics3 special tokens: ``<image>``, ``<fake_token_around_image>``, ``<global-img>``,
``<row_i_col_j>``, ``<end_of_utterance>``), ``tokenizer_config.json`` / ``chat_template.jinja``
with SmolVLM's chat template, and the processor's ``preprocessor_config.json`` /
``processor_config.json`` -- everything transformers' ``AutoProcessor`` and vLLM load offline.

Sizes: 32x32-pixel tiles of 8x8 patches (16 patches), pixel shuffle by 2 -> 4 image tokens per
tile; images are resized to a longest edge of 64 (``longest_edge``), so an image is 1 tile or
up to 2x2 tiles + the global one. The text model is a Llama with head_dim 32 (vLLM's CPU
attention needs >= 32). ``overrides``: ``seed``, ``longest_edge``, ``tile``, ``patch``,
``scale_factor``, ``vocab_size`` (the tokenizer padded with unused special tokens up to it),
``text`` / ``vision`` (dicts of config fields).
"""

from __future__ import annotations

import json
import os
from typing import Any

from tests.helpers.tiny_models import _tokenizer_json

#: the chat template of SmolVLM-256M/500M-Instruct (Idefics3 architecture)
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
IMAGE_TOKENS = (
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
)


def _tokenizer(vocab_size: int | None = None) -> str:
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_str(_tokenizer_json(512, False))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in IMAGE_TOKENS])
    if vocab_size is not None and vocab_size > tok.get_vocab_size():  # a realistic LM head
        extra = vocab_size - tok.get_vocab_size()
        tok.add_special_tokens([AddedToken(f"<unused_{i}>", special=True) for i in range(extra)])
    return tok.to_str()


def tiny_idefics3_dir(path: str, **overrides: Any) -> str:
    """Write a tiny random-weight Idefics3 checkpoint + processor into ``path``; returns it."""
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        PreTrainedTokenizerFast,
    )

    seed = overrides.pop("seed", 0)
    tile = overrides.pop("tile", 32)
    patch = overrides.pop("patch", 8)
    scale = overrides.pop("scale_factor", 2)
    longest = overrides.pop("longest_edge", 2 * tile)
    tok_json = _tokenizer(overrides.pop("vocab_size", None))
    vocab = json.loads(tok_json)
    ids = {t["content"]: t["id"] for t in vocab["added_tokens"]}
    vocab_size = max(ids.values()) + 1
    text = dict(
        model_type="llama",
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        bos_token_id=1,
        eos_token_id=ids["<end_of_utterance>"],
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    text.update(overrides.pop("text", {}))
    vision = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=tile,
        patch_size=patch,
        layer_norm_eps=1e-6,
    )
    vision.update(overrides.pop("vision", {}))
    if overrides:
        raise TypeError(f"unknown overrides: {', '.join(overrides)}")
    config = Idefics3Config(
        text_config=text,
        vision_config=vision,
        scale_factor=scale,
        image_token_id=ids["<image>"],
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    os.makedirs(path, exist_ok=True)
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # norms and biases start at 1/0: randomise them so they are tested
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "layernorm.weight", "layer_norm1.weight",
                              "layer_norm2.weight")):  # fmt: skip
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn_like(p))
            elif "embedding" in name or name.endswith("embed_tokens.weight"):
                p.copy_(0.5 * torch.randn_like(p))
    model.save_pretrained(path)
    tok_file = os.path.join(path, "tokenizer.json")
    with open(tok_file, "w") as f:
        f.write(tok_json)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=tok_file,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        model_max_length=1024,
        additional_special_tokens=list(IMAGE_TOKENS),
    )
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=True,
        max_image_size={"longest_edge": tile},
        size={"longest_edge": longest},
    )
    seq = (tile // patch) ** 2 // scale**2
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=seq,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)
    with open(os.path.join(path, "tokenizer_config.json")) as f:
        tok_config = json.load(f)
    tok_config["chat_template"] = CHAT_TEMPLATE  # our engine and vLLM read it from here too
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(tok_config, f, indent=1)
    return path
