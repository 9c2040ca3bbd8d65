"""The building blocks the text encoders, UNet and VAE share: typed parameter tuples and the ops
that use them, channels-last (NHWC) throughout.

Layouts: a ``Linear`` holds ``w [in, out]``; a ``Conv`` holds ``w [kh, kw, in, out]`` (HWIO).
Normalisations and softmax compute in float32 whatever the parameter dtype (as PyTorch's kernels
do for half precision), and results return in the activations' dtype.
"""

from __future__ import annotations

import math
from typing import NamedTuple, TypeAlias

import jax
import jax.numpy as jnp
from jax import lax

from hyperbatch.engines.attention import (  # noqa: F401  (the blocks' attention)
    DEFAULT_ATTENTION,
    KINDS,
    AttentionImpl,
    attention,
)

Array: TypeAlias = jax.Array


class Linear(NamedTuple):
    w: Array  # [in, out]
    b: Array | None  # [out]


class Conv(NamedTuple):
    w: Array  # [kh, kw, in, out]
    b: Array | None  # [out]


class Norm(NamedTuple):
    scale: Array  # [C]
    bias: Array  # [C]


def linear(p: Linear, x: Array) -> Array:
    y = jnp.dot(x, p.w.astype(x.dtype), preferred_element_type=x.dtype)
    return y if p.b is None else y + p.b.astype(x.dtype)


def conv2d(p: Conv, x: Array, stride: int = 1, padding: int | None = None) -> Array:
    """``x [B, H, W, C]``; ``padding`` defaults to "same" for odd kernels (``k // 2`` each side).

    An input smaller than the kernel (the UNet's last level at small sizes: 2x2) goes through an
    explicit patch matrix and one matmul: XLA's CPU convolution runs such shapes ~20x slower."""
    k = p.w.shape[0]
    pad = k // 2 if padding is None else padding
    b, h, w, c = x.shape
    if stride == 1 and k > 1 and (h < k or w < k):
        xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        oh, ow = h + 2 * pad - k + 1, w + 2 * pad - k + 1
        patches = jnp.concatenate(
            [xp[:, i : i + oh, j : j + ow, :] for i in range(k) for j in range(k)], axis=-1
        )
        y = jnp.dot(
            patches.reshape(b * oh * ow, k * k * c),
            p.w.astype(x.dtype).reshape(k * k * c, -1),
            preferred_element_type=x.dtype,
        ).reshape(b, oh, ow, -1)
        return y if p.b is None else y + p.b.astype(x.dtype)
    y = lax.conv_general_dilated(
        x,
        p.w.astype(x.dtype),
        window_strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=x.dtype,
    )
    return y if p.b is None else y + p.b.astype(x.dtype)


def group_norm(p: Norm, x: Array, groups: int, eps: float) -> Array:
    """torch.nn.GroupNorm over the channels of ``x [B, ..., C]`` (biased variance, two passes).

    Channels-last, the statistics are per-channel sums over the positions (column reductions
    XLA vectorises well) combined per group; the normalisation folds into one scale and shift
    per (row, channel)."""
    shape = x.shape
    b, c = shape[0], shape[-1]
    per_group = c // groups
    xf = x.astype(jnp.float32).reshape(b, -1, c)
    count = xf.shape[1] * per_group
    mean = jnp.sum(xf, axis=1).reshape(b, groups, per_group).sum(-1) / count
    mean_c = jnp.repeat(mean, per_group, axis=1)  # [B, C]
    centred = xf - mean_c[:, None, :]
    var = jnp.sum(centred * centred, axis=1).reshape(b, groups, per_group).sum(-1) / count
    scale = jnp.repeat(lax.rsqrt(var + eps), per_group, axis=1) * p.scale.astype(jnp.float32)
    shift = p.bias.astype(jnp.float32) - mean_c * scale
    return (xf * scale[:, None, :] + shift[:, None, :]).astype(x.dtype).reshape(shape)


def layer_norm(p: Norm, x: Array, eps: float) -> Array:
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    centred = xf - mean
    var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
    y = centred * lax.rsqrt(var + eps)
    return (y * p.scale.astype(jnp.float32) + p.bias.astype(jnp.float32)).astype(x.dtype)


def silu(x: Array) -> Array:
    return x * jax.nn.sigmoid(x)


def gelu(x: Array) -> Array:
    """The exact (erf) GELU of torch.nn.functional.gelu."""
    return jax.nn.gelu(x, approximate=False)


def quick_gelu(x: Array) -> Array:
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {"gelu": gelu, "quick_gelu": quick_gelu, "silu": silu, "swish": silu}


def timestep_embedding(
    t: Array, dim: int, flip_sin_to_cos: bool, shift: float, max_period: float = 10000.0
) -> Array:
    """diffusers' ``get_timestep_embedding`` for ``t [N]`` (float32) -> ``[N, dim]`` float32."""
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32)
    exponent = exponent / (half - shift)
    emb = t.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    emb = jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def upsample_nearest(x: Array, size: tuple[int, int] | None = None) -> Array:
    """torch's ``F.interpolate(mode="nearest")``: x2 by default, or to ``size`` (odd skips)."""
    b, h, w, c = x.shape
    if size is None or size == (2 * h, 2 * w):
        x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
        return x.reshape(b, 2 * h, 2 * w, c)
    oh, ow = size
    rows = jnp.floor(jnp.arange(oh) * (h / oh)).astype(jnp.int32)
    cols = jnp.floor(jnp.arange(ow) * (w / ow)).astype(jnp.int32)
    return x[:, rows][:, :, cols]
