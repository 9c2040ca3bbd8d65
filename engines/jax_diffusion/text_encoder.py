"""CLIP's text transformer (transformers' ``CLIPTextModel`` / ``CLIPTextModelWithProjection``).

``encode`` returns what the SD pipelines read: the last hidden state after the final layer norm
(SD 1.x/2.x), the penultimate layer's output without it (SDXL's ``hidden_states[-2]``) and the
pooled end-token state, projected when the model has a ``text_projection`` (SDXL's second
encoder). Attention is causal with no padding mask, as in the pipelines.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hyperbatch.engines.jax_diffusion import layers as L
from hyperbatch.engines.jax_diffusion.config import TextEncoderConfig
from hyperbatch.engines.jax_diffusion.weights import Tensors


class EncoderLayer(NamedTuple):  # every field stacked over the layers: [num_layers, ...]
    ln1: L.Norm
    qkv: L.Linear  # [D, 3D]: q | k | v
    out: L.Linear
    ln2: L.Norm
    fc1: L.Linear
    fc2: L.Linear


class TextEncoderParams(NamedTuple):
    token_embedding: jax.Array  # [vocab, D]
    position_embedding: jax.Array  # [positions, D]
    layers: EncoderLayer
    final_ln: L.Norm
    projection: L.Linear | None  # [D, projection_dim], no bias


class TextEncoding(NamedTuple):
    last: jax.Array  # [B, T, D] final-norm last hidden state
    penultimate: jax.Array  # [B, T, D] hidden_states[-2]
    pooled: jax.Array  # [B, D] or [B, projection_dim]


def params_from(cfg: TextEncoderConfig, t: Tensors) -> TextEncoderParams:
    def layer(i: int) -> EncoderLayer:
        p = f"encoder.layers.{i}."
        q, k, v = (t.linear(p + f"self_attn.{n}_proj") for n in "qkv")
        return EncoderLayer(
            ln1=t.norm(p + "layer_norm1"),
            qkv=L.Linear(np.concatenate([q.w, k.w, v.w], 1), np.concatenate([q.b, k.b, v.b])),
            out=t.linear(p + "self_attn.out_proj"),
            ln2=t.norm(p + "layer_norm2"),
            fc1=t.linear(p + "mlp.fc1"),
            fc2=t.linear(p + "mlp.fc2"),
        )

    per_layer = [layer(i) for i in range(cfg.num_layers)]
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *per_layer)
    projection = None
    if cfg.projection_dim is not None:
        projection = t.linear("text_projection", bias=False)
    params = TextEncoderParams(
        token_embedding=t.take(
            "embeddings.token_embedding.weight", (cfg.vocab_size, cfg.hidden_size)
        ),
        position_embedding=t.take(
            "embeddings.position_embedding.weight", (cfg.max_positions, cfg.hidden_size)
        ),
        layers=stacked,
        final_ln=t.norm("final_layer_norm"),
        projection=projection,
    )
    if "embeddings.position_ids" in t:
        t.take("embeddings.position_ids")
    t.finish()
    return params


def _layer(
    cfg: TextEncoderConfig, p: EncoderLayer, h: jax.Array, impl: L.AttentionImpl
) -> jax.Array:
    act = L.ACTIVATIONS[cfg.activation]
    x = L.layer_norm(p.ln1, h, cfg.eps)
    q, k, v = jnp.split(L.linear(p.qkv, x), 3, axis=-1)
    h = h + L.linear(p.out, L.attention(q, k, v, cfg.num_heads, impl, causal=True))
    x = L.layer_norm(p.ln2, h, cfg.eps)
    return h + L.linear(p.fc2, act(L.linear(p.fc1, x)))


@jax.named_scope("text_encoder")
def encode(
    cfg: TextEncoderConfig,
    p: TextEncoderParams,
    ids: jax.Array,
    dtype,
    impl: L.AttentionImpl = L.DEFAULT_ATTENTION,
) -> TextEncoding:
    """``ids [B, T]`` int32 -> ``TextEncoding`` in ``dtype``."""
    seq = ids.shape[1]
    h = (p.token_embedding[ids] + p.position_embedding[:seq][None]).astype(dtype)
    head = jax.tree.map(lambda a: a[:-1], p.layers)
    last_layer = jax.tree.map(lambda a: a[-1], p.layers)
    h, _ = lax.scan(lambda c, lp: (_layer(cfg, lp, c, impl), None), h, head)
    penultimate = h
    last = L.layer_norm(p.final_ln, _layer(cfg, last_layer, h, impl), cfg.eps)
    if cfg.eos_token_id == 2:  # legacy configs: the end token is the highest id (transformers)
        eos_at = jnp.argmax(ids, axis=-1)
    else:
        eos_at = jnp.argmax((ids == cfg.eos_token_id).astype(jnp.int32), axis=-1)
    pooled = jnp.take_along_axis(last, eos_at[:, None, None], axis=1)[:, 0]
    if p.projection is not None:
        pooled = L.linear(p.projection, pooled)
    return TextEncoding(last=last, penultimate=penultimate, pooled=pooled)
