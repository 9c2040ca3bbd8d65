"""Tiny random-weight checkpoints for tests: HF directories per Llama-family variant, and GGUF.

``tiny_llama_dir(path, variant="llama", **overrides) -> str`` is the stable entry point (the
pipeline and vLLM engine tests use it too). It writes a Hugging Face layout -- ``config.json``,
sharded ``*.safetensors`` + index, ``generation_config.json``, ``tokenizer.json`` (a byte-level
BPE of a few hundred tokens trained on a built-in English corpus, plus ChatML special tokens) and
``tokenizer_config.json`` with a chat template -- so chat prompts tokenize into plausible lengths.

Variants: ``llama`` (Llama 2 style: BOS, untied), ``llama3`` (Llama 3.1 RoPE scaling), ``mistral``
(sliding window), ``qwen2`` (q/k/v bias), ``smollm2`` (tied embeddings, SmolLM2's chat template
with its default system prompt). ``overrides`` are config fields (e.g. ``num_hidden_layers=3``)
plus ``seed`` and ``max_shard_size``.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

VARIANTS = ("llama", "llama3", "mistral", "qwen2", "smollm2")

CORPUS = """\
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
What is the capital of France? The capital of France is Paris, a city on the river Seine.
Name three colours: red, green and blue. The sky is blue and the grass is green.
Write a haiku about the sea and the wind and the long grey rocks of the northern shore.
Tell me a short story about a robot who learns to paint, in two sentences.
Once upon a time there was a small robot who lived in a quiet town by the sea.
Every morning the robot walked to the shore and watched the waves roll over the rocks.
One day it found a box of paints and began to paint the sky, the sea and the birds.
You are a helpful assistant. Answer the question briefly and clearly.
Please summarise the following text in one sentence. Explain why the answer is correct.
The weather today is sunny with a light wind from the west; tomorrow it will rain.
Machine learning models learn patterns from data and use them to make predictions.
Large language models generate text one token at a time, given a prompt and a context.
Batch inference pushes many prompts through a model at once to use the hardware well.
Two plus two is four. Three times three is nine. Ten minus one is nine.
The library opens at nine in the morning and closes at five in the evening.
She read the book, wrote a letter to her friend and went for a walk in the park.
Good morning! How are you today? I am fine, thank you, and you?
The river flows to the sea, and the sea reaches the far horizon where the sun sets.
Please list the steps: first open the door, then turn on the light, then sit down.
You are a helpful AI assistant named SmolLM, trained by Hugging Face. You are a helpful assistant.
The user asks a question and the assistant answers it; the system sets the rules for both.
Hello, world. This is a test of the tokenizer with numbers like 42, 1999 and 3.14.
"""

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Llama-2 style: BOS first, a system message is only allowed first, roles must alternate.
LLAMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and not loop.first %}"
    "{{ raise_exception('the system message must come first') }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] | trim + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# SmolLM2-Instruct's template: a default system prompt when the chat has none.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@functools.lru_cache(maxsize=4)
def _tokenizer_json(vocab_size: int, add_bos: bool) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,
        show_progress=False,
    )
    lines = CORPUS.splitlines()
    tok.train_from_iterator(lines * 4, trainer=trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok.to_str()


def _variant_config(variant: str, vocab_size: int) -> tuple[Any, str, dict[str, Any]]:
    """(transformers config, chat template, tokenizer special tokens) for a variant."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        initializer_range=0.1,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=2,
    )
    ml = {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>"}
    if variant == "llama":
        return LlamaConfig(**common, rope_theta=10000.0), LLAMA_TEMPLATE, ml
    if variant == "llama3":
        cfg = LlamaConfig(
            **common,
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        )
        return cfg, LLAMA_TEMPLATE, ml
    if variant == "mistral":
        return MistralConfig(**common, rope_theta=10000.0, sliding_window=24), CHATML_TEMPLATE, ml
    if variant == "qwen2":
        qcommon = {**common, "bos_token_id": None}
        cfg = Qwen2Config(**qcommon, rope_theta=1000000.0, tie_word_embeddings=False)
        return cfg, CHATML_TEMPLATE, {**ml, "bos_token": None}
    if variant == "smollm2":
        cfg = LlamaConfig(
            **{
                **common,
                "hidden_size": 96,
                "num_attention_heads": 6,
                "num_key_value_heads": 2,
                "bos_token_id": 1,
            },
            rope_theta=100000.0,
            tie_word_embeddings=True,
        )
        return cfg, SMOLLM2_TEMPLATE, {**ml, "bos_token": "<|im_start|>"}
    raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")


def tiny_llama_dir(path: str, variant: str = "llama", **overrides: Any) -> str:
    """Write a tiny random-weight HF checkpoint of ``variant`` into ``path``; returns ``path``.

    Deterministic for given arguments (seeded). ``overrides``: config fields, ``seed`` (int,
    default 0), ``max_shard_size`` (default "64KB": several safetensors shards + an index).
    """
    import torch
    from transformers import AutoModelForCausalLM

    seed = overrides.pop("seed", 0)
    shard = overrides.pop("max_shard_size", "64KB")
    add_bos = variant in ("llama", "llama3", "mistral")
    tok_json = _tokenizer_json(512, add_bos)
    vocab_size = len(json.loads(tok_json)["model"]["vocab"])
    config, template, special = _variant_config(variant, vocab_size)
    for key, value in overrides.items():
        setattr(config, key, value)
    os.makedirs(path, exist_ok=True)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # norms and biases start at 1/0: randomise them so they are tested
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn_like(p))
    model.save_pretrained(path, max_shard_size=shard)
    with open(os.path.join(path, "tokenizer.json"), "w") as f:
        f.write(tok_json)
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": config.max_position_embeddings,
        "chat_template": template,
        "clean_up_tokenization_spaces": False,
        **{k: v for k, v in special.items() if v is not None},
    }
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(tok_config, f, indent=1)
    return path


def _permute(w, n_head: int):
    """llama.cpp's Q/K row permutation (convert_hf_to_gguf.py)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def tiny_gguf(hf_dir: str, out_path: str, quant: str = "F32") -> str:
    """Convert a ``tiny_llama_dir`` checkpoint (llama/smollm2 variants) to GGUF as llama.cpp's
    converter does (Q/K rows permuted, tokenizer + chat template in the metadata).
    ``quant``: "F32" or "Q8_0" for the 2-D weights."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    with open(os.path.join(hf_dir, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(hf_dir, "tokenizer_config.json")) as f:
        tcfg = json.load(f)
    with open(os.path.join(hf_dir, "tokenizer.json")) as f:
        tok = json.load(f)
    tensors: dict[str, np.ndarray] = {}
    for name in sorted(os.listdir(hf_dir)):
        if name.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(hf_dir, name)))

    w = gguf.GGUFWriter(out_path, "llama")
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(cfg["hidden_size"] // heads)
    w.add_rope_freq_base(float((cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(0 if quant == "F32" else 7)

    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv_: kv_[1])
    tokens = [t for t, _ in vocab]
    types = [3 if t in SPECIAL_TOKENS else 1 for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index(tcfg.get("bos_token") or "<|endoftext|>"))
    w.add_eos_token_id(tokens.index(tcfg["eos_token"]))
    w.add_add_bos_token(False)
    w.add_chat_template(tcfg["chat_template"])

    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    layer_names = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    for hf_name, arr in tensors.items():
        if hf_name == "lm_head.weight" and cfg.get("tie_word_embeddings"):
            continue
        if hf_name in names:
            name = names[hf_name]
        else:
            _, _, i, rest = hf_name.split(".", 3)
            name = f"blk.{i}.{layer_names[rest]}"
            if rest.startswith("self_attn.q_proj"):
                arr = _permute(arr, heads)
            elif rest.startswith("self_attn.k_proj"):
                arr = _permute(arr, kv)
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if quant == "Q8_0" and arr.ndim == 2 and arr.shape[-1] % 32 == 0:
            q = gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out_path
