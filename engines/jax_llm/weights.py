"""Checkpoint loading: HF safetensors (sharded or not) and GGUF files -> the model's param pytree.

Both readers produce HF-named, HF-oriented float32 numpy arrays (``[out, in]``); ``to_params``
fuses and stacks them into the layout ``model.py`` documents, then casts to the engine dtype.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from typing import Any

import ml_dtypes
import numpy as np

from hyperbatch.engines import models
from hyperbatch.engines.jax_llm.config import ModelConfig, UnsupportedModel, from_gguf, from_hf

_ST_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "U8": np.uint8,
}


class CheckpointError(ValueError):
    """The checkpoint files are incomplete or inconsistent; the message names what is wrong."""


def read_safetensors(path: str) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) for each tensor of one .safetensors file, memory-mapped (no copy)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = _ST_DTYPES.get(meta["dtype"])
        if dtype is None:
            raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {meta['dtype']}")
        start, end = meta["data_offsets"]
        yield name, data[start:end].view(dtype).reshape(meta["shape"])


def load_hf(model_dir: str) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    generation = None
    gen_path = os.path.join(model_dir, "generation_config.json")
    if os.path.isfile(gen_path):
        with open(gen_path) as f:
            generation = json.load(f)
    cfg = from_hf(config, generation)
    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.isfile(index_path):
        with open(index_path) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = sorted(p for p in os.listdir(model_dir) if p.endswith(".safetensors"))
    tensors: dict[str, np.ndarray] = {}
    for name in files:
        path = os.path.join(model_dir, name)
        if not os.path.isfile(path):
            raise CheckpointError(f"{model_dir}: shard {name} named by the index is missing")
        for key, arr in read_safetensors(path):
            tensors[key.removeprefix("model.") if key.startswith("model.") else key] = arr
    return cfg, tensors


# GGUF tensor names (llama.cpp) -> HF names (without the "model." prefix)
_GGUF_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GGUF_TOP = {
    "token_embd.weight": "embed_tokens.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
}


def gguf_metadata(reader: Any) -> dict[str, Any]:
    """GGUF key/values as python values (token and merge lists included)."""
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        meta[key] = field.contents()
    return meta


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (it stores RoPE pairs interleaved)."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_gguf(path: str) -> tuple[ModelConfig, dict[str, np.ndarray], dict[str, Any]]:
    from gguf.quants import dequantize

    reader = models.open_gguf(path)
    meta = gguf_metadata(reader)
    names = {t.name for t in reader.tensors}
    cfg = from_gguf(meta, has_output_tensor="output.weight" in names)
    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        arr = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        if t.name == "rope_freqs.weight":
            cfg = _with_freq_factors(cfg, arr)
            continue
        if t.name in _GGUF_TOP:
            hf = _GGUF_TOP[t.name]
        else:
            parts = t.name.split(".", 2)
            if parts[0] != "blk" or parts[2] not in _GGUF_LAYER:
                raise UnsupportedModel(f"{path}: unexpected tensor {t.name}")
            hf = f"layers.{parts[1]}.{_GGUF_LAYER[parts[2]]}"
            if cfg.architecture == "llama" and parts[2].startswith(("attn_q.", "attn_k.")):
                heads = cfg.num_heads if parts[2].startswith("attn_q") else cfg.num_kv_heads
                arr = _unpermute(arr, heads)
        tensors[hf] = arr
    return cfg, tensors, meta


def _with_freq_factors(cfg: ModelConfig, factors: np.ndarray) -> ModelConfig:
    import dataclasses

    return dataclasses.replace(cfg, rope_freq_factors=tuple(float(x) for x in factors.ravel()))


def to_params(cfg: ModelConfig, tensors: dict[str, np.ndarray], dtype: Any) -> dict[str, Any]:
    """HF-named tensors -> the fused numpy pytree of ``model.py`` (``dtype`` e.g. np.float32)."""

    def get(name: str) -> np.ndarray:
        if name not in tensors:
            raise CheckpointError(f"checkpoint lacks tensor {name!r}")
        return np.asarray(tensors[name], dtype=np.float32)

    d, hd = cfg.hidden_size, cfg.head_dim
    kvh, g, f = cfg.num_kv_heads, cfg.group_size, cfg.intermediate_size
    layers: list[dict[str, np.ndarray]] = []

    for i in range(cfg.num_layers):
        layer: dict[str, np.ndarray] = {}
        layers.append(layer)

        def add(key: str, value: np.ndarray, layer=layer) -> None:
            layer[key] = np.ascontiguousarray(value, dtype=dtype)

        p = f"layers.{i}."
        q = get(p + "self_attn.q_proj.weight").T.reshape(d, kvh, g, hd)
        k = get(p + "self_attn.k_proj.weight").T.reshape(d, kvh, 1, hd)
        v = get(p + "self_attn.v_proj.weight").T.reshape(d, kvh, 1, hd)
        add("attn_norm", get(p + "input_layernorm.weight"))
        add("wqkv", np.concatenate([q, k, v], axis=2))
        if cfg.qkv_bias:
            bq = get(p + "self_attn.q_proj.bias").reshape(kvh, g, hd)
            bk = get(p + "self_attn.k_proj.bias").reshape(kvh, 1, hd)
            bv = get(p + "self_attn.v_proj.bias").reshape(kvh, 1, hd)
            add("bqkv", np.concatenate([bq, bk, bv], axis=1))
        add("wo", get(p + "self_attn.o_proj.weight").T)
        if cfg.o_bias:
            add("bo", get(p + "self_attn.o_proj.bias"))
        add("mlp_norm", get(p + "post_attention_layernorm.weight"))
        gate = get(p + "mlp.gate_proj.weight").T
        up = get(p + "mlp.up_proj.weight").T
        add("w_gate_up", np.stack([gate, up], axis=1).reshape(d, 2, f))
        add("w_down", get(p + "mlp.down_proj.weight").T)
        if cfg.mlp_bias:
            add(
                "b_gate_up",
                np.stack([get(p + "mlp.gate_proj.bias"), get(p + "mlp.up_proj.bias")]),
            )
            add("b_down", get(p + "mlp.down_proj.bias"))
    embed = get("embed_tokens.weight")
    if embed.shape != (cfg.vocab_size, d):
        raise CheckpointError(
            f"embed_tokens has shape {embed.shape}, expected {(cfg.vocab_size, d)}"
        )
    head = (
        embed
        if cfg.tie_word_embeddings or "lm_head.weight" not in tensors
        else get("lm_head.weight")
    )
    return {
        "embed": embed.astype(dtype),
        "lm_head": np.ascontiguousarray(head.T).astype(dtype),
        "final_norm": get("norm.weight").astype(dtype),
        "layers": layers,
    }
