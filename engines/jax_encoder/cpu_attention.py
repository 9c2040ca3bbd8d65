"""The CPU encoder-attention kernel (``cpu_attention.cc``): built once per machine (see
``engines.cpu_kernels``), called from JAX. ``load()`` raises ``KernelUnavailable`` with the
reason when it cannot be had; the encoder then uses XLA's attention.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from hyperbatch.engines.cpu_kernels import CpuKernel, KernelUnavailable

SOURCE = Path(__file__).with_name("cpu_attention.cc")
TARGET = "hyperbatch_encoder_attention"
TARGET_PACKED = "hyperbatch_encoder_attention_packed"
TARGET_FULL = "hyperbatch_attention"
KERNEL = CpuKernel(
    SOURCE,
    "the encoder attention kernel",
    {
        TARGET: "HyperbatchEncoderAttention",
        TARGET_PACKED: "HyperbatchEncoderAttentionPacked",
        TARGET_FULL: "HyperbatchAttention",
    },
)
build = KERNEL.build
load = KERNEL.load

__all__ = [
    "KernelUnavailable",
    "attention",
    "attention_packed",
    "build",
    "full_attention",
    "load",
    "supports",
]


def supports(head_dim: int) -> str | None:
    """None if the kernel serves this head size, else the reason it does not."""
    if head_dim % 16 or head_dim > 256:
        return f"head_dim {head_dim} (the kernel needs a multiple of 16, at most 256)"
    return None


def attention(qkv: jax.Array, lengths: jax.Array) -> jax.Array:
    """qkv [B, T, 3, H, hd] float32 (q pre-scaled), lengths [B] -> out [B, T, H, hd] float32,
    zeros at padded positions. ``load()`` must have run."""
    b, t, _, h, hd = qkv.shape
    out = jax.ShapeDtypeStruct((b, t, h, hd), jnp.float32)
    return jax.ffi.ffi_call(TARGET, out)(qkv.astype(jnp.float32), lengths.astype(jnp.int32))


def attention_packed(qkv: jax.Array, starts: jax.Array, lengths: jax.Array) -> jax.Array:
    """qkv [N, 3, H, hd] float32 (q pre-scaled) holding sequences back to back; sequence s is
    tokens ``starts[s] : starts[s] + lengths[s]`` (length 0: unused) -> out [N, H, hd], each
    sequence attending within itself, zeros where no sequence is. ``load()`` must have run."""
    n, _, h, hd = qkv.shape
    out = jax.ShapeDtypeStruct((n, h, hd), jnp.float32)
    return jax.ffi.ffi_call(TARGET_PACKED, out)(
        qkv.astype(jnp.float32), starts.astype(jnp.int32), lengths.astype(jnp.int32)
    )


def full_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Every query of a row attends to every key of its row (self- or cross-attention, no mask):
    q [B, Lq, H, hd] float32 (pre-scaled), k, v [B, Lk, H, hd] -> out [B, Lq, H, hd] float32;
    any hd up to 256. ``load()`` must have run."""
    out = jax.ShapeDtypeStruct(q.shape, jnp.float32)
    return jax.ffi.ffi_call(TARGET_FULL, out)(
        q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32)
    )
