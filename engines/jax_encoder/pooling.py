"""Token states -> one vector per row, as sentence-transformers' Pooling and Normalize modules do
(``truncate_dimensions``, for Matryoshka-style shorter vectors, lives in ``engines.embedding``).

Pooling reads only positions < length, so right padding never reaches a vector. All arithmetic is
fp32 (sentence-transformers accumulates half-precision states in fp32 too).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hyperbatch.engines.embedding import NORM_EPS


def pool(hidden: jax.Array, lengths: jax.Array, mode: str) -> jax.Array:
    """hidden [B, T, D], lengths [B] -> [B, D] float32."""
    b, t, _ = hidden.shape
    h = hidden.astype(jnp.float32)
    if mode == "cls":
        return h[:, 0]
    if mode == "lasttoken":
        return h[jnp.arange(b), jnp.maximum(lengths - 1, 0)]
    mask = jnp.arange(t, dtype=jnp.int32)[None, :] < lengths[:, None]
    if mode == "mean":
        total = jnp.einsum("btd,bt->bd", h, mask.astype(jnp.float32))
        return total / jnp.maximum(lengths.astype(jnp.float32), 1e-9)[:, None]
    if mode == "max":
        return jnp.where(mask[:, :, None], h, -jnp.inf).max(axis=1)
    raise ValueError(f"unknown pooling mode {mode!r}")


def l2_normalize(v: jax.Array) -> jax.Array:
    norm = jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True))
    return v / jnp.maximum(norm, NORM_EPS)
