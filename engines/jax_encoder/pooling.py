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


def pool_packed(
    hidden: jax.Array, segments: jax.Array, starts: jax.Array, lengths: jax.Array, mode: str
) -> jax.Array:
    """hidden [R, W, D] of packed sequences (``segments`` [R, W]: each token's sequence, -1 for
    padding; sequence s is the flat tokens ``starts[s] : starts[s] + lengths[s]``) -> [S, D]
    float32 (zeros for unused sequence slots, length 0)."""
    r, w, d = hidden.shape
    n = starts.shape[0]
    flat = hidden.reshape(r * w, d).astype(jnp.float32)
    seg = jnp.where(segments >= 0, segments, n).reshape(-1)  # padding: a dropped extra slot
    if mode == "cls":
        return flat[starts]
    if mode == "lasttoken":
        return flat[starts + jnp.maximum(lengths - 1, 0)]
    if mode == "mean":
        total = jax.ops.segment_sum(flat, seg, num_segments=n + 1)[:n]
        return total / jnp.maximum(lengths.astype(jnp.float32), 1.0)[:, None]
    if mode == "max":
        best = jax.ops.segment_max(flat, seg, num_segments=n + 1)[:n]
        return jnp.where((lengths > 0)[:, None], best, 0.0)
    raise ValueError(f"unknown pooling mode {mode!r}")
