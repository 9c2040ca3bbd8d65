"""diffusers' ``UNet2DConditionModel`` for the SD 1.x/2.x/XL family, channels-last.

Blocks: ``CrossAttnDownBlock2D``/``DownBlock2D``, ``UNetMidBlock2DCrossAttn``,
``CrossAttnUpBlock2D``/``UpBlock2D``; ``Transformer2DModel`` with conv or linear projections and
``BasicTransformerBlock``s (self-attention, cross-attention, GEGLU feed-forward); SDXL's
``text_time`` added embedding (pooled text embedding + sinusoidal size/crop conditioning).
``apply`` maps ``(sample [B, h, w, C] NHWC, t [B], context [B, T, D], added)`` to the model
output in the same layout.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hyperbatch.engines.jax_diffusion import layers as L
from hyperbatch.engines.jax_diffusion.config import UNetConfig
from hyperbatch.engines.jax_diffusion.weights import Tensors


class Resnet(NamedTuple):
    norm1: L.Norm
    conv1: L.Conv
    time_proj: L.Linear | None
    norm2: L.Norm
    conv2: L.Conv
    shortcut: L.Conv | None


class Attention(NamedTuple):
    q: L.Linear
    kv: L.Linear  # [D_context, 2 * inner]: k | v
    out: L.Linear


class SelfAttention(NamedTuple):
    qkv: L.Linear  # [D, 3 * inner]: q | k | v
    out: L.Linear


class TransformerBlock(NamedTuple):
    norm1: L.Norm
    attn1: SelfAttention
    norm2: L.Norm
    attn2: Attention
    norm3: L.Norm
    ff_in: L.Linear  # GEGLU projection [D, 2 * 4D]: value | gate
    ff_out: L.Linear


class Transformer2D(NamedTuple):
    norm: L.Norm
    proj_in: L.Linear
    blocks: tuple[TransformerBlock, ...]
    proj_out: L.Linear


class Level(NamedTuple):
    resnets: tuple[Resnet, ...]
    attentions: tuple[Transformer2D, ...]  # empty for blocks without cross-attention
    resample: L.Conv | None  # downsampler / upsampler conv


class UNetParams(NamedTuple):
    conv_in: L.Conv
    time_1: L.Linear
    time_2: L.Linear
    add_1: L.Linear | None
    add_2: L.Linear | None
    down: tuple[Level, ...]
    mid: Level
    up: tuple[Level, ...]
    norm_out: L.Norm
    conv_out: L.Conv


class Added(NamedTuple):
    """SDXL's micro-conditioning inputs (absent for SD 1.x/2.x)."""

    text_embeds: jax.Array  # [B, projection_dim] pooled text embedding
    time_ids: jax.Array  # [B, 6] original size, crop top-left, target size


# --- loading --------------------------------------------------------------------------------


def _resnet(t: Tensors, p: str, time: bool = True) -> Resnet:
    return Resnet(
        norm1=t.norm(p + "norm1"),
        conv1=t.conv(p + "conv1"),
        time_proj=t.linear(p + "time_emb_proj") if time else None,
        norm2=t.norm(p + "norm2"),
        conv2=t.conv(p + "conv2"),
        shortcut=t.conv(p + "conv_shortcut") if f"{p}conv_shortcut.weight" in t else None,
    )


def _cat(*ls: L.Linear) -> L.Linear:
    """Fuse projections that read the same input (q|k|v): one wider matmul."""
    bias = None
    if any(x.b is not None for x in ls):
        bias = np.concatenate(
            [x.b if x.b is not None else np.zeros(x.w.shape[1], np.float32) for x in ls]
        )
    return L.Linear(np.concatenate([x.w for x in ls], axis=1), bias)


def _transformer(t: Tensors, p: str, layers: int) -> Transformer2D:
    blocks = []
    for i in range(layers):
        b = f"{p}transformer_blocks.{i}."
        a1, a2 = b + "attn1.", b + "attn2."
        blocks.append(
            TransformerBlock(
                norm1=t.norm(b + "norm1"),
                attn1=SelfAttention(
                    qkv=_cat(*(t.linear(a1 + f"to_{n}", bias=False) for n in "qkv")),
                    out=t.linear(a1 + "to_out.0"),
                ),
                norm2=t.norm(b + "norm2"),
                attn2=Attention(
                    q=t.linear(a2 + "to_q", bias=False),
                    kv=_cat(t.linear(a2 + "to_k", bias=False), t.linear(a2 + "to_v", bias=False)),
                    out=t.linear(a2 + "to_out.0"),
                ),
                norm3=t.norm(b + "norm3"),
                ff_in=t.linear(b + "ff.net.0.proj"),
                ff_out=t.linear(b + "ff.net.2"),
            )
        )
    return Transformer2D(
        norm=t.norm(p + "norm"),
        proj_in=t.linear(p + "proj_in"),
        blocks=tuple(blocks),
        proj_out=t.linear(p + "proj_out"),
    )


def params_from(cfg: UNetConfig, t: Tensors) -> UNetParams:
    down = []
    for i, kind in enumerate(cfg.down_block_types):
        p = f"down_blocks.{i}."
        n = cfg.layers_per_block[i]
        cross = kind.startswith("CrossAttn")
        down.append(
            Level(
                resnets=tuple(_resnet(t, f"{p}resnets.{j}.") for j in range(n)),
                attentions=tuple(
                    _transformer(t, f"{p}attentions.{j}.", cfg.transformer_layers[i])
                    for j in range(n if cross else 0)
                ),
                resample=t.conv(f"{p}downsamplers.0.conv") if i < cfg.levels - 1 else None,
            )
        )
    mid = Level(
        resnets=(_resnet(t, "mid_block.resnets.0."), _resnet(t, "mid_block.resnets.1.")),
        attentions=(_transformer(t, "mid_block.attentions.0.", cfg.transformer_layers[-1]),),
        resample=None,
    )
    up = []
    rev_layers = tuple(reversed(cfg.layers_per_block))
    for i, kind in enumerate(cfg.up_block_types):
        p = f"up_blocks.{i}."
        n = rev_layers[i] + 1
        cross = kind.startswith("CrossAttn")
        up.append(
            Level(
                resnets=tuple(_resnet(t, f"{p}resnets.{j}.") for j in range(n)),
                attentions=tuple(
                    _transformer(t, f"{p}attentions.{j}.", cfg.up_transformer_layers[i])
                    for j in range(n if cross else 0)
                ),
                resample=t.conv(f"{p}upsamplers.0.conv") if i < cfg.levels - 1 else None,
            )
        )
    add_1 = add_2 = None
    if cfg.addition_embed_type == "text_time":
        add_1, add_2 = t.linear("add_embedding.linear_1"), t.linear("add_embedding.linear_2")
    params = UNetParams(
        conv_in=t.conv("conv_in"),
        time_1=t.linear("time_embedding.linear_1"),
        time_2=t.linear("time_embedding.linear_2"),
        add_1=add_1,
        add_2=add_2,
        down=tuple(down),
        mid=mid,
        up=tuple(up),
        norm_out=t.norm("conv_norm_out"),
        conv_out=t.conv("conv_out"),
    )
    t.finish()
    return params


# --- forward --------------------------------------------------------------------------------


@jax.named_scope("resnet")
def resnet(p: Resnet, x: jax.Array, temb: jax.Array | None, groups: int, eps: float) -> jax.Array:
    h = L.silu(L.group_norm(p.norm1, x, groups, eps))
    h = L.conv2d(p.conv1, h)
    if p.time_proj is not None and temb is not None:
        h = h + L.linear(p.time_proj, L.silu(temb))[:, None, None, :]
    h = L.silu(L.group_norm(p.norm2, h, groups, eps))
    h = L.conv2d(p.conv2, h)
    if p.shortcut is not None:
        x = L.conv2d(p.shortcut, x)
    return x + h


def _transformer_block(
    p: TransformerBlock, h: jax.Array, context: jax.Array, heads: int, impl: L.AttentionImpl
) -> jax.Array:
    with jax.named_scope("self_attention"):
        x = L.layer_norm(p.norm1, h, 1e-5)
        q, k, v = jnp.split(L.linear(p.attn1.qkv, x), 3, axis=-1)
        h = h + L.linear(p.attn1.out, L.attention(q, k, v, heads, impl))
    with jax.named_scope("cross_attention"):
        x = L.layer_norm(p.norm2, h, 1e-5)
        k, v = jnp.split(L.linear(p.attn2.kv, context), 2, axis=-1)
        q = L.linear(p.attn2.q, x)
        h = h + L.linear(p.attn2.out, L.attention(q, k, v, heads, impl))
    with jax.named_scope("feed_forward"):
        x = L.layer_norm(p.norm3, h, 1e-5)
        value, gate = jnp.split(L.linear(p.ff_in, x), 2, axis=-1)
        return h + L.linear(p.ff_out, value * L.gelu(gate))


@jax.named_scope("transformer")
def transformer(
    p: Transformer2D,
    x: jax.Array,
    context: jax.Array,
    heads: int,
    groups: int,
    impl: L.AttentionImpl,
) -> jax.Array:
    """``Transformer2DModel`` on ``x [B, H, W, C]``: conv 1x1 and linear projections are the same
    per-position matmul in channels-last."""
    b, hh, ww, c = x.shape
    h = L.group_norm(p.norm, x, groups, 1e-6)
    h = L.linear(p.proj_in, h.reshape(b, hh * ww, c))
    for block in p.blocks:
        h = _transformer_block(block, h, context, heads, impl)
    h = L.linear(p.proj_out, h)
    return x + h.reshape(b, hh, ww, -1)


@jax.named_scope("unet")
def apply(
    cfg: UNetConfig,
    p: UNetParams,
    sample: jax.Array,
    t: jax.Array,
    context: jax.Array,
    added: Added | None = None,
    *,
    impl: L.AttentionImpl = L.DEFAULT_ATTENTION,
) -> jax.Array:
    dtype = sample.dtype
    groups, eps = cfg.groups, cfg.eps
    t_emb = L.timestep_embedding(t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
    emb = L.linear(p.time_2, L.silu(L.linear(p.time_1, t_emb.astype(dtype))))
    if cfg.addition_embed_type == "text_time":
        if added is None:
            raise ValueError("this UNet needs SDXL's added conditioning (text_embeds, time_ids)")
        b = added.time_ids.shape[0]
        assert cfg.addition_time_embed_dim is not None
        assert p.add_1 is not None
        assert p.add_2 is not None
        time_embeds = L.timestep_embedding(
            added.time_ids.reshape(-1),
            cfg.addition_time_embed_dim,
            cfg.flip_sin_to_cos,
            cfg.freq_shift,
        ).reshape(b, -1)
        add = jnp.concatenate([added.text_embeds.astype(dtype), time_embeds.astype(dtype)], axis=-1)
        emb = emb + L.linear(p.add_2, L.silu(L.linear(p.add_1, add)))

    h = L.conv2d(p.conv_in, sample)
    skips = [h]
    for i, level in enumerate(p.down):
        for j, res in enumerate(level.resnets):
            h = resnet(res, h, emb, groups, eps)
            if level.attentions:
                h = transformer(level.attentions[j], h, context, cfg.heads[i], groups, impl)
            skips.append(h)
        if level.resample is not None:
            h = L.conv2d(level.resample, h, stride=2, padding=1)
            skips.append(h)

    h = resnet(p.mid.resnets[0], h, emb, groups, eps)
    h = transformer(p.mid.attentions[0], h, context, cfg.heads[-1], groups, impl)
    h = resnet(p.mid.resnets[1], h, emb, groups, eps)

    rev_heads = tuple(reversed(cfg.heads))
    for i, level in enumerate(p.up):
        for j, res in enumerate(level.resnets):
            h = jnp.concatenate([h, skips.pop()], axis=-1)
            h = resnet(res, h, emb, groups, eps)
            if level.attentions:
                h = transformer(level.attentions[j], h, context, rev_heads[i], groups, impl)
        if level.resample is not None:
            size = tuple(skips[-1].shape[1:3])
            h = L.conv2d(level.resample, L.upsample_nearest(h, size))

    h = L.silu(L.group_norm(p.norm_out, h, groups, eps))
    return L.conv2d(p.conv_out, h)
