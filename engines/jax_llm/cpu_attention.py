"""The CPU attention-layer kernel (``cpu_attention.cc``): built once per machine (see
``engines.cpu_kernels``), called from JAX. ``attention_layer`` calls it; engines ask ``load()``
and say why they use XLA's attention instead when it raises ``KernelUnavailable``.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from hyperbatch.engines.cpu_kernels import CpuKernel, KernelUnavailable

SOURCE = Path(__file__).with_name("cpu_attention.cc")
TARGET = "hyperbatch_cpu_attention_layer"
MAX_GROUP = 8  # query heads per KV head the kernel is specialised for
TILE = 16  # key positions per tile of the kernel's k cache
COPY_TARGET = "hyperbatch_cpu_copy_positions"
KERNEL = CpuKernel(
    SOURCE,
    "the CPU attention kernel",
    {TARGET: "HyperbatchAttentionLayer", COPY_TARGET: "HyperbatchCopyPositions"},
)
build = KERNEL.build
load = KERNEL.load

__all__ = [
    "TILE",
    "KernelUnavailable",
    "attention_layer",
    "build",
    "copy_positions",
    "key_cache_shape",
    "load",
    "supports",
]


def key_cache_shape(rows: int, kvh: int, hd: int, s: int) -> tuple[int, ...]:
    """The kernel's k cache for ``rows`` rows of ``s`` positions: [rows, KVH, T, hd, TILE], keys
    in tiles of TILE positions (T = ceil(s / TILE)), position p's dim h at [p // TILE, h,
    p % TILE] -- a row's live keys are one contiguous run of tiles (see ``cpu_attention.cc``)."""
    return (rows, kvh, -(-s // TILE), hd, TILE)


def supports(num_heads: int, num_kv_heads: int) -> str | None:
    """None if the kernel serves this attention layout, else the reason it does not."""
    group = num_heads // num_kv_heads
    if group > MAX_GROUP:
        return f"{group} query heads per KV head (the kernel handles up to {MAX_GROUP})"
    return None


def attention_layer(qkv, cos, sin, k_cache, v_cache, rows, pos, window: int | None):
    """One layer's cache update and attention for N tokens (all float32).

    qkv [N, KVH, G+2, hd]: each KV head's G query projections, then k, then v, before RoPE;
    cos/sin [N, hd]: RoPE tables at each token's position; caches k [R, KVH, T, hd, TILE]
    (``key_cache_shape``), v [R, KVH, S, hd]; rows/pos [N]: each token's cache row and position. Writes RoPE(k) and v of
    every token, then attends each token's RoPE'd queries over its row's keys up to its position.
    Tokens with a row out of range or a position outside the cache write nothing and get zeros.
    Returns (out [N, KVH*G*hd], k_cache, v_cache), the caches updated in place (aliased).
    ``load()`` must have run."""
    n, kvh, g2, hd = qkv.shape
    shapes = (
        jax.ShapeDtypeStruct((n, kvh, g2 - 2, hd), jnp.float32),
        jax.ShapeDtypeStruct(k_cache.shape, jnp.float32),
        jax.ShapeDtypeStruct(v_cache.shape, jnp.float32),
    )
    out, k_cache, v_cache = jax.ffi.ffi_call(TARGET, shapes, input_output_aliases={3: 1, 4: 2})(
        qkv.astype(jnp.float32),
        cos.astype(jnp.float32),
        sin.astype(jnp.float32),
        k_cache,
        v_cache,
        rows.astype(jnp.int32),
        pos.astype(jnp.int32),
        window=np.int64(window or 0),
    )
    return out.reshape(n, kvh * (g2 - 2) * hd), k_cache, v_cache


def copy_positions(src_k, src_v, dst_k, dst_v, src_rows, dst_rows, lens):
    """The first ``lens[q]`` positions of cache rows ``src_rows[q]`` (k [R, KVH, T, hd, TILE], v
    [R, KVH, S, hd]) copied into rows ``dst_rows[q]`` of the destination caches (their own R and
    S), for every q whose rows are both in range. Returns the destination (k, v), updated in
    place (aliased). ``load()`` must have run."""
    shapes = (
        jax.ShapeDtypeStruct(dst_k.shape, jnp.float32),
        jax.ShapeDtypeStruct(dst_v.shape, jnp.float32),
    )
    return jax.ffi.ffi_call(COPY_TARGET, shapes, input_output_aliases={2: 0, 3: 1})(
        src_k,
        src_v,
        dst_k,
        dst_v,
        src_rows.astype(jnp.int32),
        dst_rows.astype(jnp.int32),
        lens.astype(jnp.int32),
    )
