"""The BERT-family encoder in plain JAX: token ids [B, T] + lengths [B] -> hidden states [B, T, D]
(``hidden_states``), or sequences packed back to back into rows (``hidden_states_packed``).

Post-LayerNorm blocks with GELU, absolute positions, token type 0 (single sentences), as
transformers' ``BertModel``/``RobertaModel`` compute ``last_hidden_state``. Rows are right-padded:
a key at position >= its row's length gets an additive -1e30 bias, so its softmax weight is an
exact zero and padding never changes a real position's result. Padded query positions are
computed and ignored (pooling masks them). Matmuls run in the parameter dtype; LayerNorm, softmax
and their statistics run in fp32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hyperbatch.engines.jax_encoder import cpu_attention
from hyperbatch.engines.jax_encoder.config import BertConfig
from hyperbatch.engines.jax_encoder.weights import BertLayer, BertParams, Norm

MASKED = -1e30  # finite: a row with no visible key (a dummy row) stays free of NaNs


def layer_norm(x: jax.Array, norm: Norm, eps: float) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    centred = x32 - mean
    var = jnp.mean(centred * centred, axis=-1, keepdims=True)
    y = centred * jax.lax.rsqrt(var + eps)
    return (y * norm.scale.astype(jnp.float32) + norm.bias.astype(jnp.float32)).astype(x.dtype)


def _attention(cfg: BertConfig, qkv: jax.Array, key_bias: jax.Array) -> jax.Array:
    """qkv [B, T, 3D] (q pre-scaled) -> context [B, T, D]; key_bias [B, 1, 1 or T, T].

    Heads are moved in front of positions before the two batched matmuls (XLA's CPU dot is
    several times slower on the [B, T, H, hd] layout), and the softmax is normalised after the
    value matmul: one division per output element instead of one per score."""
    b, t, _ = qkv.shape
    h, hd = cfg.num_heads, cfg.head_dim
    q, k, v = jnp.transpose(qkv.reshape(b, t, 3, h, hd), (2, 0, 3, 1, 4))
    s = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) + key_bias
    p = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
    ctx = jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    ctx = ctx / jnp.sum(p, axis=-1, keepdims=True)
    return jnp.transpose(ctx.astype(qkv.dtype), (0, 2, 1, 3)).reshape(b, t, h * hd)


def _layer(cfg: BertConfig, lp: BertLayer, x: jax.Array, attend) -> jax.Array:
    eps = cfg.layer_norm_eps
    ctx = attend(x @ lp.wqkv + lp.bqkv).astype(x.dtype)
    x = layer_norm(x + (ctx @ lp.wo + lp.bo), lp.attn_norm, eps)
    inner = jax.nn.gelu(x @ lp.w_in + lp.b_in, approximate=cfg.gelu_approximate)
    return layer_norm(x + inner @ lp.w_out + lp.b_out, lp.mlp_norm, eps)


def _encode(params: BertParams, x: jax.Array, cfg: BertConfig, attend) -> jax.Array:
    x = layer_norm(x, params.embed_norm, cfg.layer_norm_eps)
    for lp in params.layers:
        x = _layer(cfg, lp, x, attend)
    return x


def hidden_states(
    params: BertParams,
    tokens: jax.Array,
    lengths: jax.Array,
    *,
    cfg: BertConfig,
    attention: str = "xla",
) -> jax.Array:
    """``last_hidden_state`` [B, T, D] of right-padded ``tokens`` [B, T] with ``lengths`` [B].

    ``attention``: "xla" (every platform) or "cpu" (the CPU kernel; ``cpu_attention.load()``
    must have run)."""
    b, t = tokens.shape
    h, hd = cfg.num_heads, cfg.head_dim
    visible = jnp.arange(t, dtype=jnp.int32)[None, :] < lengths[:, None]
    key_bias = jnp.where(visible, 0.0, MASKED).astype(jnp.float32)[:, None, None, :]

    def attend(qkv: jax.Array) -> jax.Array:
        if attention == "cpu":
            ctx = cpu_attention.attention(qkv.reshape(b, t, 3, h, hd), lengths)
            return ctx.reshape(b, t, h * hd)
        return _attention(cfg, qkv, key_bias)

    x = jnp.take(params.word, tokens, axis=0) + params.position[:t]
    return _encode(params, x, cfg, attend)


def hidden_states_packed(
    params: BertParams,
    tokens: jax.Array,
    positions: jax.Array,
    segments: jax.Array,
    starts: jax.Array,
    lengths: jax.Array,
    *,
    cfg: BertConfig,
    attention: str = "xla",
) -> jax.Array:
    """``last_hidden_state`` [R, W, D] of sequences packed back to back into rows: ``tokens``,
    each token's ``positions`` (from 0 in its own sequence) and ``segments`` (its sequence's
    index, -1 for padding) [R, W]; sequence s is the flat tokens ``starts[s] :
    starts[s] + lengths[s]`` [S]. A token attends to its own sequence only, so each sequence's
    states are what it would get alone."""
    r, w = tokens.shape
    h, hd = cfg.num_heads, cfg.head_dim
    same = (segments[:, :, None] == segments[:, None, :]) & (segments >= 0)[:, None, :]
    key_bias = jnp.where(same, 0.0, MASKED).astype(jnp.float32)[:, None, :, :]

    def attend(qkv: jax.Array) -> jax.Array:
        if attention == "cpu":
            ctx = cpu_attention.attention_packed(qkv.reshape(r * w, 3, h, hd), starts, lengths)
            return ctx.reshape(r, w, h * hd)
        return _attention(cfg, qkv, key_bias)

    x = jnp.take(params.word, tokens, axis=0) + jnp.take(params.position, positions, axis=0)
    return _encode(params, x, cfg, attend)
