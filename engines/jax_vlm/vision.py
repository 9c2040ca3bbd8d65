"""The vision tower and connector in JAX: tiles ``[V, 3, S, S]`` -> image tokens ``[V, T, D]``.

Idefics3's tower is SigLIP's: the tile cut into ``P x P`` patches (a strided conv, here one
matmul over flattened patches), plus learned position embeddings, then pre-LayerNorm encoder
layers (bidirectional multi-head attention, GELU-tanh MLP) and a final LayerNorm. Every tile is
whole (the processor makes all tiles S x S), so no patch is masked and positions are the same
for every tile (``position_ids``, computed as transformers buckets them). The connector
pixel-shuffles the ``n x n`` patch grid by ``scale`` (``scale^2`` neighbours side by side in
the channels: ``(n/scale)^2`` tokens of ``scale^2 * hidden``) and projects to the text model's
width. One jitted program per tile batch size (the engine uses one: ``vision_batch``).

Parameter layout (one pytree): ``patch_w [3*P*P, Dv]``, ``patch_b [Dv]``, ``pos [n*n, Dv]``,
``layers[i]``: ``ln1_w, ln1_b, wqkv [Dv, 3*Dv] (q, k, v side by side), bqkv [3*Dv], wo [Dv, Dv],
bo, ln2_w, ln2_b, w1 [Dv, F], b1, w2 [F, Dv], b2``; ``post_w, post_b``; ``proj [scale^2*Dv, D]``.

Attention is the shared ``engines.attention`` (``impl``: its CPU form on a CPU -- heads in front
of positions, plain batched matmuls: 3-4x faster there than the einsum-and-softmax XLA fused
into one slow kernel -- and ``jax.nn.dot_product_attention`` on accelerators).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyperbatch.engines.attention import DEFAULT_ATTENTION, AttentionImpl, attention
from hyperbatch.engines.jax_llm.weights import CheckpointError
from hyperbatch.engines.jax_vlm.config import VisionConfig, VLMConfig

Params = dict[str, Any]


def position_ids(n: int) -> np.ndarray:
    """Position ids of a whole tile's ``n x n`` patches, bucketed as transformers does (float32
    fractional coordinates against ``arange(1/n, 1, 1/n)``; for whole tiles, ``0..n*n-1``)."""
    boundaries = np.arange(1 / n, 1.0, 1 / n, dtype=np.float32)
    coords = np.minimum(np.arange(n, dtype=np.float32) * np.float32(1.0 / n), np.float32(1 - 1e-6))
    buckets = np.searchsorted(boundaries, coords, side="right")
    return (buckets[:, None] * n + buckets[None, :]).reshape(-1).astype(np.int32)


def to_params(cfg: VLMConfig, tensors: dict[str, np.ndarray], dtype: Any) -> Params:
    """HF-named vision and connector tensors (without ``model.``) -> the pytree above."""

    def get(name: str) -> np.ndarray:
        if name not in tensors:
            raise CheckpointError(f"checkpoint lacks tensor {name!r}")
        return np.asarray(tensors[name], dtype=np.float32)

    v: VisionConfig = cfg.vision
    d = v.hidden_size
    pre = "vision_model."
    conv = get(pre + "embeddings.patch_embedding.weight")  # [Dv, 3, P, P]
    pos = get(pre + "embeddings.position_embedding.weight")[position_ids(v.patches_per_side)]

    def c(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=dtype)

    layers = []
    for i in range(v.num_layers):
        p = f"{pre}encoder.layers.{i}."
        qkv = [get(f"{p}self_attn.{n}_proj.weight").T for n in "qkv"]
        bqkv = [get(f"{p}self_attn.{n}_proj.bias") for n in "qkv"]
        layers.append({
            "ln1_w": c(get(p + "layer_norm1.weight")), "ln1_b": c(get(p + "layer_norm1.bias")),
            "wqkv": c(np.concatenate(qkv, axis=1)), "bqkv": c(np.concatenate(bqkv)),
            "wo": c(get(p + "self_attn.out_proj.weight").T),
            "bo": c(get(p + "self_attn.out_proj.bias")),
            "ln2_w": c(get(p + "layer_norm2.weight")), "ln2_b": c(get(p + "layer_norm2.bias")),
            "w1": c(get(p + "mlp.fc1.weight").T), "b1": c(get(p + "mlp.fc1.bias")),
            "w2": c(get(p + "mlp.fc2.weight").T), "b2": c(get(p + "mlp.fc2.bias")),
        })  # fmt: skip
    proj = get("connector.modality_projection.proj.weight").T  # [scale^2 * Dv, D]
    if proj.shape != (cfg.scale_factor**2 * d, cfg.text.hidden_size):
        raise CheckpointError(f"connector projection has shape {proj.shape}")
    return {
        "patch_w": c(conv.reshape(d, -1).T),
        "patch_b": c(get(pre + "embeddings.patch_embedding.bias")),
        "pos": c(pos),
        "layers": layers,
        "post_w": c(get(pre + "post_layernorm.weight")),
        "post_b": c(get(pre + "post_layernorm.bias")),
        "proj": c(proj),
    }


def _layer_norm(x: jax.Array, w: jax.Array, b: jax.Array, eps: float) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype) * w + b


def pixel_shuffle(x: jax.Array, scale: int) -> jax.Array:
    """``[B, n*n, C] -> [B, (n/scale)^2, scale^2 * C]``, as Idefics3's connector orders it."""
    b, seq, ch = x.shape
    n = round(seq**0.5)
    x = x.reshape(b, n, n // scale, ch * scale)
    x = jnp.transpose(x, (0, 2, 1, 3))
    x = x.reshape(b, n // scale, n // scale, ch * scale * scale)
    x = jnp.transpose(x, (0, 2, 1, 3))
    return x.reshape(b, seq // (scale * scale), ch * scale * scale)


@functools.partial(jax.jit, static_argnames=("cfg", "impl"))
def encode(
    params: Params, pixels: jax.Array, *, cfg: VLMConfig, impl: AttentionImpl = DEFAULT_ATTENTION
) -> jax.Array:
    """Tiles ``[V, 3, S, S]`` -> image token embeddings ``[V, tokens_per_tile, D]``."""
    v = cfg.vision
    n, p = v.patches_per_side, v.patch_size
    b = pixels.shape[0]
    x = pixels.astype(params["patch_w"].dtype)
    patches = x.reshape(b, 3, n, p, n, p).transpose(0, 2, 4, 1, 3, 5).reshape(b, n * n, -1)
    h = patches @ params["patch_w"] + params["patch_b"] + params["pos"]
    approximate = v.hidden_act == "gelu_pytorch_tanh"
    for lp in params["layers"]:
        y = _layer_norm(h, lp["ln1_w"], lp["ln1_b"], v.layer_norm_eps)
        q, k, vv = jnp.split(y @ lp["wqkv"] + lp["bqkv"], 3, axis=-1)
        h = h + attention(q, k, vv, v.num_heads, impl) @ lp["wo"] + lp["bo"]
        y = _layer_norm(h, lp["ln2_w"], lp["ln2_b"], v.layer_norm_eps)
        y = jax.nn.gelu(y @ lp["w1"] + lp["b1"], approximate=approximate)
        h = h + y @ lp["w2"] + lp["b2"]
    h = _layer_norm(h, params["post_w"], params["post_b"], v.layer_norm_eps)
    return pixel_shuffle(h, cfg.scale_factor) @ params["proj"]
