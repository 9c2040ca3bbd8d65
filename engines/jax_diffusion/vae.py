"""The decoder half of diffusers' ``AutoencoderKL`` (latents -> pixels in [-1, 1]), channels-last.

``unscale_latents`` is the pipelines' step before decoding (``/ scaling_factor``, or SDXL's
``latents_mean``/``latents_std``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from hyperbatch.engines.jax_diffusion import layers as L
from hyperbatch.engines.jax_diffusion.config import VAEConfig
from hyperbatch.engines.jax_diffusion.unet import Resnet, resnet
from hyperbatch.engines.jax_diffusion.weights import Tensors

_EPS = 1e-6  # the decoder's norms use diffusers' fixed 1e-6


class SpatialAttention(NamedTuple):
    norm: L.Norm
    qkv: L.Linear  # [C, 3C]: q | k | v (one head)
    out: L.Linear


class DecoderLevel(NamedTuple):
    resnets: tuple[Resnet, ...]
    upsample: L.Conv | None


class VAEDecoderParams(NamedTuple):
    post_quant_conv: L.Conv | None
    conv_in: L.Conv
    mid_resnets: tuple[Resnet, Resnet]
    mid_attention: SpatialAttention | None
    up: tuple[DecoderLevel, ...]
    norm_out: L.Norm
    conv_out: L.Conv


_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def params_from(cfg: VAEConfig, t: Tensors) -> VAEDecoderParams:
    import numpy as np

    p = "decoder."
    attention = None
    if cfg.mid_attention:
        a = f"{p}mid_block.attentions.0."
        for old, new in _LEGACY_ATTENTION.items():
            for leaf in ("weight", "bias"):
                t.rename(f"{a}{old}.{leaf}", f"{a}{new}.{leaf}")
        q, k, v = (t.linear(f"{a}to_{n}") for n in "qkv")
        attention = SpatialAttention(
            norm=t.norm(f"{a}group_norm"),
            qkv=L.Linear(np.concatenate([q.w, k.w, v.w], 1), np.concatenate([q.b, k.b, v.b])),
            out=t.linear(f"{a}to_out.0"),
        )
    up = []
    n_levels = len(cfg.block_out_channels)
    for i in range(n_levels):
        b = f"{p}up_blocks.{i}."
        up.append(
            DecoderLevel(
                resnets=tuple(
                    _vae_resnet(t, f"{b}resnets.{j}.") for j in range(cfg.layers_per_block + 1)
                ),
                upsample=t.conv(f"{b}upsamplers.0.conv") if i < n_levels - 1 else None,
            )
        )
    params = VAEDecoderParams(
        post_quant_conv=t.conv("post_quant_conv") if cfg.post_quant_conv else None,
        conv_in=t.conv(f"{p}conv_in"),
        mid_resnets=(
            _vae_resnet(t, f"{p}mid_block.resnets.0."),
            _vae_resnet(t, f"{p}mid_block.resnets.1."),
        ),
        mid_attention=attention,
        up=tuple(up),
        norm_out=t.norm(f"{p}conv_norm_out"),
        conv_out=t.conv(f"{p}conv_out"),
    )
    t.discard("encoder.")
    t.discard("quant_conv.")
    t.finish()
    return params


def _vae_resnet(t: Tensors, p: str) -> Resnet:
    return Resnet(
        norm1=t.norm(p + "norm1"),
        conv1=t.conv(p + "conv1"),
        time_proj=None,
        norm2=t.norm(p + "norm2"),
        conv2=t.conv(p + "conv2"),
        shortcut=t.conv(p + "conv_shortcut") if f"{p}conv_shortcut.weight" in t else None,
    )


def _attention(p: SpatialAttention, x: jax.Array, groups: int, impl: L.AttentionImpl) -> jax.Array:
    b, h, w, c = x.shape
    hs = L.group_norm(p.norm, x, groups, _EPS).reshape(b, h * w, c)
    q, k, v = jnp.split(L.linear(p.qkv, hs), 3, axis=-1)
    out = L.linear(p.out, L.attention(q, k, v, 1, impl))
    return x + out.reshape(b, h, w, c)


def unscale_latents(cfg: VAEConfig, latents: jax.Array, sdxl: bool) -> jax.Array:
    """The pipelines' step before ``vae.decode`` on channels-last ``latents [B, h, w, C]``: SDXL's
    pipeline applies ``latents_mean``/``latents_std`` when the VAE config has them; SD's only
    divides by ``scaling_factor``."""
    if sdxl and cfg.latents_mean is not None and cfg.latents_std is not None:
        mean = jnp.asarray(cfg.latents_mean, latents.dtype)
        std = jnp.asarray(cfg.latents_std, latents.dtype)
        return latents * std / cfg.scaling_factor + mean
    return latents / cfg.scaling_factor


@jax.named_scope("vae_decode")
def decode(
    cfg: VAEConfig, p: VAEDecoderParams, z: jax.Array, impl: L.AttentionImpl = L.DEFAULT_ATTENTION
) -> jax.Array:
    """Unscaled latents ``z [B, h, w, C]`` -> pixels ``[B, H, W, 3]`` in about [-1, 1]."""
    groups = cfg.groups
    if p.post_quant_conv is not None:
        z = L.conv2d(p.post_quant_conv, z)
    h = L.conv2d(p.conv_in, z)
    h = resnet(p.mid_resnets[0], h, None, groups, _EPS)
    if p.mid_attention is not None:
        h = _attention(p.mid_attention, h, groups, impl)
    h = resnet(p.mid_resnets[1], h, None, groups, _EPS)
    for level in p.up:
        for res in level.resnets:
            h = resnet(res, h, None, groups, _EPS)
        if level.upsample is not None:
            h = L.conv2d(level.upsample, L.upsample_nearest(h))
    h = L.silu(L.group_norm(p.norm_out, h, groups, _EPS))
    return L.conv2d(p.conv_out, h)
