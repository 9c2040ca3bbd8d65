"""Typed, validated configs of the components, parsed from the diffusers/transformers JSON files.

Each parser checks the options that change the computation against the values we implement and
raises ``UnsupportedModel`` naming the key otherwise (never a silent fallback); keys that only
matter for training (dropout, sample_size, ...) are ignored.
"""

from __future__ import annotations

import dataclasses
from typing import Any


class UnsupportedModel(ValueError):
    """The checkpoint uses an architecture option this engine does not implement."""


def _check(
    where: str, cfg: dict[str, Any], key: str, allowed: tuple[Any, ...], default: Any
) -> Any:
    value = cfg.get(key, default)
    if value not in allowed:
        raise UnsupportedModel(
            f"{where}: {key}={value!r} is not supported (supported: {', '.join(map(repr, allowed))})"
        )
    return value


def _per_level(value: Any, n: int) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, list | tuple) else (value,) * n


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    max_positions: int
    activation: str  # "quick_gelu" | "gelu"
    eps: float
    eos_token_id: int
    projection_dim: int | None  # CLIPTextModelWithProjection's text_projection


def text_encoder_config(cfg: dict[str, Any], with_projection: bool) -> TextEncoderConfig:
    where = "text encoder config"
    act = _check(where, cfg, "hidden_act", ("quick_gelu", "gelu"), "quick_gelu")
    return TextEncoderConfig(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=cfg["num_attention_heads"],
        max_positions=cfg.get("max_position_embeddings", 77),
        activation=act,
        eps=cfg.get("layer_norm_eps", 1e-5),
        eos_token_id=cfg.get("eos_token_id", 2),
        projection_dim=cfg.get("projection_dim", 512) if with_projection else None,
    )


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    in_channels: int
    out_channels: int
    block_out_channels: tuple[int, ...]
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    layers_per_block: tuple[int, ...]
    heads: tuple[int, ...]  # attention heads per level (diffusers' misnamed attention_head_dim)
    transformer_layers: tuple[int, ...]  # per down level
    up_transformer_layers: tuple[int, ...]  # per up block (reversed unless configured)
    cross_attention_dim: int
    use_linear_projection: bool
    groups: int
    eps: float
    flip_sin_to_cos: bool
    freq_shift: float
    time_embed_dim: int
    addition_embed_type: str | None  # None | "text_time" (SDXL)
    addition_time_embed_dim: int | None
    add_embed_input_dim: int | None
    conv_in_kernel: int
    conv_out_kernel: int

    @property
    def levels(self) -> int:
        return len(self.block_out_channels)


_DOWN = ("CrossAttnDownBlock2D", "DownBlock2D")
_UP = ("CrossAttnUpBlock2D", "UpBlock2D")


def unet_config(cfg: dict[str, Any]) -> UNetConfig:
    where = "unet/config.json"
    for key, default in (
        ("center_input_sample", False),
        ("only_cross_attention", False),
        ("dual_cross_attention", False),
        ("class_embed_type", None),
        ("time_cond_proj_dim", None),
        ("encoder_hid_dim", None),
        ("encoder_hid_dim_type", None),
        ("resnet_time_scale_shift", "default"),
        ("resnet_skip_time_act", False),
        ("timestep_post_act", None),
        ("time_embedding_act_fn", None),
        ("class_embeddings_concat", False),
        ("mid_block_only_cross_attention", None),
        ("cross_attention_norm", None),
        ("attention_type", "default"),
        ("num_attention_heads", None),
        ("num_class_embeds", None),
    ):
        _check(where, cfg, key, (default,) + ((False,) if default is None else ()), default)
    _check(where, cfg, "act_fn", ("silu", "swish"), "silu")
    _check(where, cfg, "time_embedding_type", ("positional",), "positional")
    _check(where, cfg, "mid_block_type", ("UNetMidBlock2DCrossAttn",), "UNetMidBlock2DCrossAttn")
    _check(where, cfg, "resnet_out_scale_factor", (1.0, 1), 1.0)
    _check(where, cfg, "mid_block_scale_factor", (1.0, 1), 1.0)
    _check(where, cfg, "downsample_padding", (1,), 1)
    _check(where, cfg, "addition_embed_type", (None, "text_time"), None)
    channels = tuple(cfg.get("block_out_channels", (320, 640, 1280, 1280)))
    n = len(channels)
    down = tuple(cfg.get("down_block_types", ()))
    up = tuple(cfg.get("up_block_types", ()))
    for block in down:
        if block not in _DOWN:
            raise UnsupportedModel(
                f"{where}: down block {block} is not supported ({', '.join(_DOWN)})"
            )
    for block in up:
        if block not in _UP:
            raise UnsupportedModel(f"{where}: up block {block} is not supported ({', '.join(_UP)})")
    if len(down) != n or len(up) != n:
        raise UnsupportedModel(f"{where}: {n} levels but {len(down)} down / {len(up)} up blocks")
    heads = _per_level(cfg.get("attention_head_dim", 8), n)
    layers = _per_level(cfg.get("transformer_layers_per_block", 1), n)
    if any(isinstance(x, list | tuple) for x in layers):
        raise UnsupportedModel(f"{where}: per-resnet transformer_layers_per_block is not supported")
    reverse = cfg.get("reverse_transformer_layers_per_block")
    if reverse is not None and any(isinstance(x, list | tuple) for x in reverse):
        raise UnsupportedModel(
            f"{where}: per-resnet reverse_transformer_layers_per_block is not supported"
        )
    up_layers = tuple(reverse) if reverse is not None else tuple(reversed(layers))
    cross = cfg.get("cross_attention_dim", 1280)
    if isinstance(cross, list | tuple):
        if len(set(cross)) != 1:
            raise UnsupportedModel(f"{where}: a cross_attention_dim per level is not supported")
        cross = cross[0]
    add_type = cfg.get("addition_embed_type")
    return UNetConfig(
        in_channels=cfg.get("in_channels", 4),
        out_channels=cfg.get("out_channels", 4),
        block_out_channels=channels,
        down_block_types=down,
        up_block_types=up,
        layers_per_block=_per_level(cfg.get("layers_per_block", 2), n),
        heads=heads,
        transformer_layers=layers,
        up_transformer_layers=up_layers,
        cross_attention_dim=cross,
        use_linear_projection=bool(cfg.get("use_linear_projection", False)),
        groups=cfg.get("norm_num_groups", 32),
        eps=cfg.get("norm_eps", 1e-5),
        flip_sin_to_cos=bool(cfg.get("flip_sin_to_cos", True)),
        freq_shift=float(cfg.get("freq_shift", 0)),
        time_embed_dim=cfg.get("time_embedding_dim") or channels[0] * 4,
        addition_embed_type=add_type,
        addition_time_embed_dim=cfg.get("addition_time_embed_dim") if add_type else None,
        add_embed_input_dim=cfg.get("projection_class_embeddings_input_dim") if add_type else None,
        conv_in_kernel=cfg.get("conv_in_kernel", 3),
        conv_out_kernel=cfg.get("conv_out_kernel", 3),
    )


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    latent_channels: int
    out_channels: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    groups: int
    scaling_factor: float
    latents_mean: tuple[float, ...] | None
    latents_std: tuple[float, ...] | None
    force_upcast: bool
    post_quant_conv: bool
    mid_attention: bool

    @property
    def scale_factor(self) -> int:
        """Pixels per latent position along each side (diffusers' ``vae_scale_factor``)."""
        return 2 ** (len(self.block_out_channels) - 1)


def vae_config(cfg: dict[str, Any]) -> VAEConfig:
    where = "vae/config.json"
    _check(where, cfg, "act_fn", ("silu", "swish"), "silu")
    for block in cfg.get("up_block_types", ("UpDecoderBlock2D",)):
        if block != "UpDecoderBlock2D":
            raise UnsupportedModel(f"{where}: up block {block} is not supported (UpDecoderBlock2D)")
    mean, std = cfg.get("latents_mean"), cfg.get("latents_std")
    return VAEConfig(
        latent_channels=cfg.get("latent_channels", 4),
        out_channels=cfg.get("out_channels", 3),
        block_out_channels=tuple(cfg.get("block_out_channels", (64,))),
        layers_per_block=cfg.get("layers_per_block", 1),
        groups=cfg.get("norm_num_groups", 32),
        scaling_factor=float(cfg.get("scaling_factor", 0.18215)),
        latents_mean=tuple(mean) if mean is not None else None,
        latents_std=tuple(std) if std is not None else None,
        force_upcast=bool(cfg.get("force_upcast", True)),
        post_quant_conv=bool(cfg.get("use_post_quant_conv", True)),
        mid_attention=bool(cfg.get("mid_block_add_attention", True)),
    )
