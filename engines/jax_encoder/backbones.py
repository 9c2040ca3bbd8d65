"""Which network turns token ids into token states: the BERT-family encoder, or a Llama/Qwen2
decoder from jax_llm (decoder embedders: causal attention, so right padding is harmless).

A ``Backbone`` is what the encoder's compiled programs need: parameters on the device, a pure
``hidden(params, tokens [B, T], lengths [B]) -> [B, T, D]`` and the model's shape.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from hyperbatch.engines.jax_encoder import bert, cpu_attention
from hyperbatch.engines.jax_encoder.config import (
    BERT_ARCHITECTURES,
    DECODER_ARCHITECTURES,
    EncoderConfigError,
)
from hyperbatch.engines.jax_encoder.weights import load_bert

HiddenFn = Callable[[Any, jax.Array, jax.Array], jax.Array]
NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


@dataclasses.dataclass(frozen=True)
class Backbone:
    architecture: str
    decoder: bool  # causal, last-token pooled by default
    params: Any  # device pytree (BertParams, or jax_llm's params dict)
    hidden: HiddenFn
    hidden_size: int
    max_length: int  # longest sequence the positions allow
    vocab_size: int
    flops_per_token: Callable[[int], int]  # matmul FLOPs per token of an L-token sequence
    attention: str = "xla"  # "xla" or "cpu" (the CPU kernel)
    attention_note: str = ""  # why the kernel is not used, when it is not
    # (params, tokens, positions, segments, starts, lengths) -> [R, W, D] for sequences packed
    # into rows (bert.hidden_states_packed); None where the family has no packed form
    hidden_packed: Callable[..., jax.Array] | None = None


def model_type(model_dir: str) -> tuple[str, dict[str, Any]]:
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise EncoderConfigError(
            f"{model_dir} has no config.json: not a Hugging Face model directory"
        )
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    return config.get("model_type", ""), config


def _choose_attention(requested: str, dtype: str, head_dim: int) -> tuple[str, str]:
    """("cpu" | "xla", why not the kernel) for the BERT family."""
    if requested == "xla":
        return "xla", "attention=xla was asked for"
    reason = None
    if jax.default_backend() != "cpu":
        reason = f"the platform is {jax.default_backend()}, not cpu"
    elif dtype != "float32":
        reason = f"the kernel is float32 only ({dtype} asked for)"
    else:
        reason = cpu_attention.supports(head_dim)
    if reason is None:
        try:
            cpu_attention.load()
            return "cpu", ""
        except cpu_attention.KernelUnavailable as e:
            reason = str(e)
    if requested == "cpu":
        raise EncoderConfigError(f"attention=cpu cannot be used: {reason}; use attention=auto")
    return "xla", reason


def load(model_dir: str, dtype: str, attention: str = "auto") -> Backbone:
    arch, _ = model_type(model_dir)
    if arch in BERT_ARCHITECTURES:
        cfg, params = load_bert(model_dir, NP_DTYPES[dtype])
        impl, note = _choose_attention(attention, dtype, cfg.head_dim)
        return Backbone(
            architecture=arch,
            decoder=False,
            params=jax.tree.map(jnp.asarray, params),
            hidden=functools.partial(bert.hidden_states, cfg=cfg, attention=impl),
            hidden_size=cfg.hidden_size,
            max_length=cfg.max_length,
            vocab_size=cfg.vocab_size,
            flops_per_token=cfg.flops_per_token,
            attention=impl,
            attention_note=note,
            hidden_packed=functools.partial(bert.hidden_states_packed, cfg=cfg, attention=impl),
        )
    if arch in DECODER_ARCHITECTURES:
        if attention == "cpu":
            raise EncoderConfigError(
                "attention=cpu serves the BERT family only; decoders use XLA's (attention=auto)"
            )
        return _load_decoder(model_dir, arch, dtype)
    raise EncoderConfigError(
        f"model_type {arch!r} is not supported by the jax encoder; supported: "
        f"{', '.join(BERT_ARCHITECTURES + DECODER_ARCHITECTURES)}"
    )


def _load_decoder(model_dir: str, arch: str, dtype: str) -> Backbone:
    from hyperbatch.engines.jax_llm import model as llm
    from hyperbatch.engines.jax_llm import weights as llm_weights

    cfg, tensors = llm_weights.load_hf(model_dir)
    params = llm_weights.to_params(cfg, tensors, NP_DTYPES[dtype])
    params.pop("lm_head")  # embedders read the final-norm states only
    params = jax.tree.map(jnp.asarray, params)

    def hidden(p, tokens, lengths):
        del lengths  # causal: positions past a row's length never reach its real positions
        block = min(64, tokens.shape[1])
        return llm.hidden_states(p, tokens, cfg=cfg, block=block)

    def flops(length: int) -> int:
        d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
        proj = d * hd * (cfg.num_heads * 2 + cfg.num_kv_heads * 2) + 3 * d * f
        return cfg.num_layers * (2 * proj + 4 * length * cfg.num_heads * hd)

    return Backbone(
        architecture=arch,
        decoder=True,
        params=params,
        hidden=hidden,
        hidden_size=cfg.hidden_size,
        max_length=cfg.max_position_embeddings,
        vocab_size=cfg.vocab_size,
        flops_per_token=flops,
        attention_note="decoders use jax_llm's XLA attention",
    )
