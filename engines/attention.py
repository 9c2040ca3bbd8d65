"""Bidirectional (or causal) multi-head softmax attention over whole sequences, as XLA runs it
fast: the diffusion engine's text encoders, UNet and VAE and the VLM's vision tower share it.

No KV cache and no paging: every query sees every key of its row (``causal``: the ones before
it). On a CPU the layout and the loop structure matter more than the FLOPs (see
``AttentionImpl``); on accelerators ``jax.nn.dot_product_attention`` picks the fused kernel.
"""

from __future__ import annotations

import functools
import logging
import math
from types import ModuleType
from typing import NamedTuple, TypeAlias

import jax
import jax.numpy as jnp
from jax import lax

Array: TypeAlias = jax.Array
log = logging.getLogger(__name__)


class AttentionImpl(NamedTuple):
    """How attention runs (static: part of the compiled program).

    ``kind="cpu"``: when a head's ``Lq x Lk`` scores are large (``>= 128 * 128``) and no causal
    mask applies, our C++ kernel (``jax_encoder/cpu_attention.cc``: a block of queries' scores
    in cache, a polynomial exp, every (row, head) on XLA's thread pool) -- 1.7x XLA's best form
    below for a 32x32 latent of head size 8, which runs one (row, head) at a time in a loop so
    the scores stay in cache instead of a ``B * H * Lq * Lk`` array going through memory (used
    where the kernel cannot be built, said once in the log); one batched computation for small
    ones.
    ``kind="xla"``: ``jax.nn.dot_product_attention`` (cuDNN's fused kernel on GPUs where it
    applies, XLA's otherwise), for accelerators. Either way queries beyond ``query_block`` are
    processed that many at a time to bound the score memory.
    """

    kind: str = "cpu"
    query_block: int = 4096


KINDS = ("cpu", "xla")
DEFAULT_ATTENTION = AttentionImpl()


def attention(
    q: Array, k: Array, v: Array, heads: int, impl: AttentionImpl, *, causal: bool = False
) -> Array:
    """Multi-head softmax attention: ``q [B, Lq, H*D]``, ``k, v [B, Lk, H*D]`` -> ``[B, Lq, H*D]``,
    scores and softmax in float32."""
    b, lq, inner = q.shape
    lk = k.shape[1]
    d = inner // heads
    blocks = lq // impl.query_block if lq > impl.query_block and lq % impl.query_block == 0 else 1
    if causal:
        blocks = 1  # the text encoder's 77 positions
    if impl.kind == "xla":
        qh, kh, vh = (x.reshape(x.shape[0], x.shape[1], heads, d) for x in (q, k, v))
        if blocks == 1:
            out = jax.nn.dot_product_attention(qh, kh, vh, is_causal=causal)
        else:
            qb = qh.reshape(b, blocks, lq // blocks, heads, d).swapaxes(0, 1)
            out = lax.map(lambda x: jax.nn.dot_product_attention(x, kh, vh), qb)
            out = out.swapaxes(0, 1)
        return out.reshape(b, lq, inner).astype(v.dtype)
    scale = 1.0 / math.sqrt(d)
    big = lq * lk >= 128 * 128
    if big and not causal and d <= 256 and (kernel := _cpu_kernel()) is not None:
        qh = (q.astype(jnp.float32) * scale).reshape(b, lq, heads, d)
        out = kernel.full_attention(qh, k.reshape(b, lk, heads, d), v.reshape(b, lk, heads, d))
        return out.reshape(b, lq, inner).astype(v.dtype)

    def scores_to_out(qh: Array, kh: Array, vh: Array) -> Array:
        """``qh [..., n, d]``, ``kh [..., Lk, d]``, ``vh [..., Lk, d + 1]`` (a ones column last,
        so the second matmul also sums each row of probabilities: one pass less over the
        scores) -> ``[..., n, d]``."""
        batch = tuple(range(qh.ndim - 2))
        s = lax.dot_general(
            qh * jnp.asarray(scale, qh.dtype),
            kh,
            (((qh.ndim - 1,), (kh.ndim - 1,)), (batch, batch)),
            preferred_element_type=jnp.float32,
        )
        if causal:
            s = jnp.where(jnp.tril(jnp.ones((qh.shape[-2], lk), bool)), s, -jnp.inf)
        s = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
        o = lax.dot_general(
            s.astype(vh.dtype),
            vh,
            (((s.ndim - 1,), (vh.ndim - 2,)), (batch, batch)),
            preferred_element_type=jnp.float32,
        )
        return (o[..., :d] / o[..., d:]).astype(v.dtype)

    def with_ones(x: Array) -> Array:
        return jnp.concatenate([x, jnp.ones((*x.shape[:-1], 1), x.dtype)], axis=-1)

    if not big and blocks == 1:
        qh = q.reshape(b, lq, heads, d).transpose(0, 2, 1, 3)
        kh = k.reshape(b, lk, heads, d).transpose(0, 2, 1, 3)
        vh = with_ones(v.reshape(b, lk, heads, d).transpose(0, 2, 1, 3))
        return scores_to_out(qh, kh, vh).transpose(0, 2, 1, 3).reshape(b, lq, inner)

    def heads_first(x: Array, n: int) -> Array:
        return x.reshape(b, n, heads, d).transpose(0, 2, 1, 3).reshape(b * heads, n, d)

    qh, kh, vh = heads_first(q, lq), heads_first(k, lk), with_ones(heads_first(v, lk))
    if blocks == 1:
        out = lax.map(lambda a: scores_to_out(*a), (qh, kh, vh))
    else:
        qb = qh.reshape(b * heads, blocks, lq // blocks, d)

        def one_head(a: tuple[Array, Array, Array]) -> Array:
            qs, kk, vv = a
            return lax.map(lambda x: scores_to_out(x, kk, vv), qs).reshape(lq, d)

        out = lax.map(one_head, (qb, kh, vh))
    return out.reshape(b, heads, lq, d).transpose(0, 2, 1, 3).reshape(b, lq, inner)


@functools.cache
def _cpu_kernel() -> ModuleType | None:
    """The C++ attention kernel's module, loaded (built once per machine); None, said once in
    the log with the reason, where it cannot be had (XLA's loop form serves instead)."""
    from hyperbatch.engines.jax_encoder import cpu_attention

    try:
        cpu_attention.load()
    except cpu_attention.KernelUnavailable as e:
        log.warning("attention on CPU runs XLA's loop form: %s", e)
        return None
    return cpu_attention
