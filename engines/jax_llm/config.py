"""The model hyper-parameters the JAX Llama-family implementation needs, from HF or GGUF metadata."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

#: HF ``model_type`` values this implementation serves (all Llama-shaped decoders).
SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")


class UnsupportedModel(ValueError):
    """The checkpoint is not a Llama-family decoder this engine implements."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None
    # ("llama3", factor, low_freq_factor, high_freq_factor, original_max_position_embeddings)
    # or ("linear", factor); None = plain RoPE. A tuple so the config stays hashable (jit static).
    rope_scaling: tuple[Any, ...] | None = None
    # llama.cpp's ``rope_freqs.weight`` (GGUF Llama 3.1): inverse frequencies are divided by these.
    rope_freq_factors: tuple[float, ...] | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    def inv_freq(self) -> np.ndarray:
        """RoPE inverse frequencies (float32), computed as transformers does."""
        dim = self.head_dim
        exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
        inv = (1.0 / (np.float32(self.rope_theta) ** exponent)).astype(np.float32)
        if self.rope_freq_factors is not None:
            inv = (inv / np.asarray(self.rope_freq_factors, np.float32)).astype(np.float32)
        if self.rope_scaling is None:
            return inv
        kind = self.rope_scaling[0]
        if kind == "linear":
            return (inv / np.float32(self.rope_scaling[1])).astype(np.float32)
        if kind == "llama3":
            _, factor, low, high, old_ctx = self.rope_scaling
            low_wavelen = old_ctx / low
            high_wavelen = old_ctx / high
            wavelen = 2 * math.pi / inv
            scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
            smooth = (old_ctx / wavelen - low) / (high - low)
            smoothed = (1 - smooth) * scaled / factor + smooth * scaled
            medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
            return np.where(medium, smoothed, scaled).astype(np.float32)
        raise UnsupportedModel(f"RoPE scaling {kind!r} is not supported")


def _rope_scaling(params: Mapping[str, Any] | None) -> tuple[Any, ...] | None:
    if not params:
        return None
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return None
    if kind == "linear":
        return ("linear", float(params["factor"]))
    if kind == "llama3":
        return (
            "llama3",
            float(params["factor"]),
            float(params["low_freq_factor"]),
            float(params["high_freq_factor"]),
            int(params["original_max_position_embeddings"]),
        )
    raise UnsupportedModel(
        f"RoPE scaling type {kind!r} is not supported (supported: default, linear, llama3)"
    )


def _ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return tuple(int(v) for v in value)
    return (int(value),)


def from_hf(config: Mapping[str, Any], generation: Mapping[str, Any] | None = None) -> ModelConfig:
    """From a transformers ``config.json`` (old ``rope_scaling`` or v5 ``rope_parameters``)."""
    arch = config.get("model_type", "llama")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModel(
            f"model_type {arch!r} is not supported by the jax engine; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)} (or use the vllm engine)"
        )
    if config.get("hidden_act", "silu") != "silu":
        raise UnsupportedModel(f"hidden_act {config['hidden_act']!r} is not supported (silu only)")
    rope = dict(config.get("rope_parameters") or {})
    legacy = config.get("rope_scaling")
    if legacy:
        rope.update(legacy)
    theta = float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    window = None
    if arch == "mistral" or (arch == "qwen2" and config.get("use_sliding_window")):
        window = config.get("sliding_window")
    attention_bias = bool(config.get("attention_bias", False))
    eos = _ids((generation or {}).get("eos_token_id")) or _ids(config.get("eos_token_id"))
    return ModelConfig(
        architecture=arch,
        vocab_size=int(config["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(config["intermediate_size"]),
        num_layers=int(config["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or hidden // heads),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        max_position_embeddings=int(config.get("max_position_embeddings", 4096)),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=arch == "qwen2" or attention_bias,
        o_bias=arch != "qwen2" and attention_bias,
        mlp_bias=bool(config.get("mlp_bias", False)),
        sliding_window=int(window) if window else None,
        rope_scaling=_rope_scaling(rope),
        bos_token_id=config.get("bos_token_id"),
        eos_token_ids=eos,
    )


def from_gguf(meta: Mapping[str, Any], has_output_tensor: bool) -> ModelConfig:
    """From GGUF metadata (llama.cpp key names); ``meta`` maps key -> python value."""
    arch = meta["general.architecture"]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModel(
            f"GGUF architecture {arch!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )

    def key(name: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{name}", default)

    heads = int(key("attention.head_count"))
    hidden = int(key("embedding_length"))
    vocab = key("vocab_size") or len(meta["tokenizer.ggml.tokens"])
    scaling = None
    if key("rope.scaling.type") == "linear":
        scaling = ("linear", float(key("rope.scaling.factor")))
    head_dim = int(key("attention.key_length") or key("rope.dimension_count") or hidden // heads)
    window = key("attention.sliding_window") if arch == "mistral" else None
    return ModelConfig(
        architecture=arch,
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(key("feed_forward_length")),
        num_layers=int(key("block_count")),
        num_heads=heads,
        num_kv_heads=int(key("attention.head_count_kv") or heads),
        head_dim=head_dim,
        rms_norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(key("rope.freq_base", 10000.0)),
        max_position_embeddings=int(key("context_length", 4096)),
        tie_word_embeddings=not has_output_tensor,
        qkv_bias=arch == "qwen2",
        sliding_window=int(window) if window else None,
        rope_scaling=scaling,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=_ids(meta.get("tokenizer.ggml.eos_token_id")),
    )
