"""BERT-family safetensors checkpoints -> the ``BertParams`` pytree (fused, transposed, cast).

Layout (``[in, out]`` matrices, so every projection is ``x @ w``):

  word [V, D]   position [P, D] (+ token type 0 folded in)   embed_norm (scale, bias) [D]
  layers[i]: wqkv [D, 3D] (columns q | k | v, head-major within each; q and its bias already
  scaled by 1/sqrt(head_dim)), bqkv [3D], wo [D, D], bo [D], attn_norm, w_in [D, F], b_in [F],
  w_out [F, D], b_out [D], mlp_norm

Folding the token-type row and the attention scale into the weights removes two elementwise
passes per forward; fusing Q/K/V makes one wide matmul instead of three.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import numpy as np

from hyperbatch.engines.jax_encoder.config import BertConfig, bert_config


class Norm(NamedTuple):
    scale: np.ndarray
    bias: np.ndarray


class BertLayer(NamedTuple):
    wqkv: np.ndarray
    bqkv: np.ndarray
    wo: np.ndarray
    bo: np.ndarray
    attn_norm: Norm
    w_in: np.ndarray
    b_in: np.ndarray
    w_out: np.ndarray
    b_out: np.ndarray
    mlp_norm: Norm


class BertParams(NamedTuple):
    word: np.ndarray
    position: np.ndarray
    embed_norm: Norm
    layers: tuple[BertLayer, ...]


class CheckpointError(ValueError):
    """The checkpoint files are missing or inconsistent; the message names what is wrong."""


# Prefixes a task head adds in front of the encoder's own names (BertForX: "bert.", ...).
_PREFIXES = ("bert.", "roberta.", "model.", "encoder_model.")


def read_tensors(model_dir: str) -> dict[str, np.ndarray]:
    """All tensors of the directory's safetensors files (sharded or not), task prefixes removed
    and old ``gamma``/``beta`` norm names mapped to ``weight``/``bias``."""
    from safetensors.numpy import load_file

    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = sorted(p for p in os.listdir(model_dir) if p.endswith(".safetensors"))
    if not files:
        raise CheckpointError(
            f"{model_dir} has no .safetensors weights; convert the checkpoint with "
            "transformers' save_pretrained(safe_serialization=True)"
        )
    tensors: dict[str, np.ndarray] = {}
    for name in files:
        path = os.path.join(model_dir, name)
        if not os.path.isfile(path):
            raise CheckpointError(f"{model_dir}: shard {name} named by the index is missing")
        for key, arr in load_file(path).items():
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    break
            if key.endswith(".gamma"):
                key = key[: -len("gamma")] + "weight"
            elif key.endswith(".beta"):
                key = key[: -len("beta")] + "bias"
            tensors[key] = arr
    return tensors


def load_bert(model_dir: str, dtype) -> tuple[BertConfig, BertParams]:
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        cfg = bert_config(json.load(f))
    return cfg, to_params(cfg, read_tensors(model_dir), dtype)


def to_params(cfg: BertConfig, tensors: dict[str, np.ndarray], dtype) -> BertParams:
    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in tensors:
            raise CheckpointError(f"checkpoint lacks tensor {name!r}")
        arr = np.asarray(tensors[name], dtype=np.float32)
        if arr.shape != shape:
            raise CheckpointError(f"tensor {name!r} has shape {arr.shape}, expected {shape}")
        return arr

    def cast(arr: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(arr, dtype=dtype)

    def norm(prefix: str) -> Norm:
        d = cfg.hidden_size
        return Norm(cast(get(prefix + ".weight", (d,))), cast(get(prefix + ".bias", (d,))))

    d, f = cfg.hidden_size, cfg.intermediate_size
    scale = np.float32(1.0 / np.sqrt(cfg.head_dim))
    layers = []
    for i in range(cfg.num_layers):
        p = f"encoder.layer.{i}."
        a = p + "attention.self."
        w = [get(a + n + ".weight", (d, d)).T for n in ("query", "key", "value")]
        b = [get(a + n + ".bias", (d,)) for n in ("query", "key", "value")]
        layers.append(
            BertLayer(
                wqkv=cast(np.concatenate([w[0] * scale, w[1], w[2]], axis=1)),
                bqkv=cast(np.concatenate([b[0] * scale, b[1], b[2]])),
                wo=cast(get(p + "attention.output.dense.weight", (d, d)).T),
                bo=cast(get(p + "attention.output.dense.bias", (d,))),
                attn_norm=norm(p + "attention.output.LayerNorm"),
                w_in=cast(get(p + "intermediate.dense.weight", (f, d)).T),
                b_in=cast(get(p + "intermediate.dense.bias", (f,))),
                w_out=cast(get(p + "output.dense.weight", (d, f)).T),
                b_out=cast(get(p + "output.dense.bias", (d,))),
                mlp_norm=norm(p + "output.LayerNorm"),
            )
        )
    word = get("embeddings.word_embeddings.weight", (cfg.vocab_size, d))
    position = get("embeddings.position_embeddings.weight", (cfg.max_position_embeddings, d))
    token_type = get("embeddings.token_type_embeddings.weight", (cfg.type_vocab_size, d))
    return BertParams(
        word=cast(word),
        position=cast(position[cfg.position_offset :] + token_type[0]),
        embed_norm=norm("embeddings.LayerNorm"),
        layers=tuple(layers),
    )
