"""What an encoder directory says about the model: BERT hyper-parameters and the sentence-transformers
head (pooling, normalisation, max_seq_length), plus the caller's typed, validated options.

A directory is either a sentence-transformers one (``modules.json``, ``1_Pooling/config.json``,
``sentence_bert_config.json``) or a plain Hugging Face one; for the latter the head falls back to
what sentence-transformers itself would build: mean pooling, no normalisation, and
``max_seq_length = min(tokenizer model_max_length, max_position_embeddings)``. Decoder embedders
(Llama/Qwen2) default to last-token pooling instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any, Literal

Pooling = Literal["mean", "cls", "lasttoken", "max"]
POOLING_MODES: tuple[str, ...] = ("mean", "cls", "lasttoken", "max")
DTYPES = ("float32", "bfloat16")
ATTENTION = ("auto", "xla", "cpu")

#: HF ``model_type`` values served by the BERT implementation (RoBERTa-style models number their
#: positions from ``pad_token_id + 1``).
BERT_ARCHITECTURES = ("bert", "roberta", "xlm-roberta")
#: served by jax_llm's decoder stack (last-token pooling)
DECODER_ARCHITECTURES = ("llama", "mistral", "qwen2")
_GELU = {"gelu": False, "gelu_new": True, "gelu_pytorch_tanh": True, "gelu_fast": True}
# sentence-transformers' legacy pooling keys (1_Pooling/config.json)
_LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


class EncoderConfigError(ValueError):
    """The model directory or the options cannot be served; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """BERT-family hyper-parameters (hashable: a static argument of the compiled programs)."""

    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    gelu_approximate: bool
    position_offset: int  # position id of the first token (RoBERTa: pad_token_id + 1)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def max_length(self) -> int:
        """Longest sequence the position table allows."""
        return self.max_position_embeddings - self.position_offset

    def flops_per_token(self, length: int) -> int:
        """Matmul FLOPs to encode one token of a ``length``-token sequence (projections, MLP
        and attention scores/values; embeddings, norms and pooling are not counted)."""
        d, f = self.hidden_size, self.intermediate_size
        return self.num_layers * (2 * (4 * d * d + 2 * d * f) + 4 * length * d)


def bert_config(config: Mapping[str, Any]) -> BertConfig:
    arch = config.get("model_type", "bert")
    if arch not in BERT_ARCHITECTURES:
        raise EncoderConfigError(
            f"model_type {arch!r} is not a BERT-family encoder; supported: "
            f"{', '.join(BERT_ARCHITECTURES + DECODER_ARCHITECTURES)}"
        )
    act = config.get("hidden_act", "gelu")
    if act not in _GELU:
        raise EncoderConfigError(f"hidden_act {act!r} is not supported ({', '.join(_GELU)})")
    kind = config.get("position_embedding_type", "absolute")
    if kind != "absolute":
        raise EncoderConfigError(
            f"position_embedding_type {kind!r} is not supported (absolute positions only)"
        )
    if config.get("is_decoder") or config.get("add_cross_attention"):
        raise EncoderConfigError("BERT decoders are not supported: use an encoder checkpoint")
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    if hidden % heads:
        raise EncoderConfigError(f"hidden_size {hidden} is not a multiple of {heads} heads")
    offset = 0 if arch == "bert" else int(config.get("pad_token_id", 1)) + 1
    return BertConfig(
        architecture=arch,
        vocab_size=int(config["vocab_size"]),
        hidden_size=hidden,
        num_layers=int(config["num_hidden_layers"]),
        num_heads=heads,
        intermediate_size=int(config["intermediate_size"]),
        max_position_embeddings=int(config["max_position_embeddings"]),
        type_vocab_size=int(config.get("type_vocab_size", 2)),
        layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
        gelu_approximate=_GELU[act],
        position_offset=offset,
    )


@dataclasses.dataclass(frozen=True)
class SentenceHead:
    """How token states become one vector: sentence-transformers' Pooling/Normalize modules and
    the Transformer module's ``max_seq_length`` / ``do_lower_case``."""

    pooling: str
    normalize: bool
    max_seq_length: int
    do_lower_case: bool = False


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _pooling_mode(cfg: Mapping[str, Any], path: str) -> str:
    mode = cfg.get("pooling_mode")
    if mode is None:
        modes = [name for key, name in _LEGACY_POOLING.items() if cfg.get(key)]
        mode = modes if len(modes) != 1 else modes[0]
        if not modes:
            mode = "mean"
    if isinstance(mode, list | tuple):
        mode = mode[0] if len(mode) == 1 else list(mode)
    if mode not in POOLING_MODES:
        raise EncoderConfigError(
            f"{path}: pooling {mode!r} is not supported (supported: {', '.join(POOLING_MODES)}); "
            "pass pooling= to override"
        )
    if cfg.get("include_prompt") is False:
        raise EncoderConfigError(f"{path}: include_prompt=false is not supported")
    return mode


def sentence_head(model_dir: str, model_config: Mapping[str, Any], decoder: bool) -> SentenceHead:
    """Read the sentence-transformers head of ``model_dir`` (defaults for a plain HF directory).

    The modules must be Transformer, optionally Pooling and Normalize, in that order (a Dense
    projection or a Router would change the vectors, so it is refused rather than ignored).
    """
    modules_path = os.path.join(model_dir, "modules.json")
    pooling = "lasttoken" if decoder else "mean"
    normalize = False
    if os.path.isfile(modules_path):
        kinds = []
        for module in _read_json(modules_path):
            kind = module["type"].rsplit(".", 1)[-1]
            kinds.append(kind)
            if kind == "Pooling":
                pooling_path = os.path.join(model_dir, module.get("path", ""), "config.json")
                pooling = _pooling_mode(_read_json(pooling_path), pooling_path)
            elif kind == "Normalize":
                normalize = True
            elif kind != "Transformer":
                raise EncoderConfigError(
                    f"{modules_path}: module {module['type']} is not supported "
                    "(Transformer, Pooling and Normalize are)"
                )
        if kinds[:1] != ["Transformer"]:
            raise EncoderConfigError(f"{modules_path}: the first module must be a Transformer")
    st_cfg: dict[str, Any] = {}
    for name in ("sentence_bert_config.json", "sentence_transformers_config.json"):
        path = os.path.join(model_dir, name)
        if os.path.isfile(path):
            st_cfg = _read_json(path)
            break
    max_len = st_cfg.get("max_seq_length")
    if max_len is None:
        tok_cfg_path = os.path.join(model_dir, "tokenizer_config.json")
        tok_max = None
        if os.path.isfile(tok_cfg_path):
            tok_max = _read_json(tok_cfg_path).get("model_max_length")
        limits = [
            int(v)
            for v in (tok_max, model_config.get("max_position_embeddings"))
            if v is not None and v > 0 and v < 10**9
        ]
        if not limits:
            raise EncoderConfigError(
                f"{model_dir}: no max_seq_length (sentence_bert_config.json), tokenizer "
                "model_max_length or max_position_embeddings: pass max_seq_length="
            )
        max_len = min(limits)
    return SentenceHead(
        pooling=pooling,
        normalize=normalize,
        max_seq_length=int(max_len),
        do_lower_case=bool(st_cfg.get("do_lower_case", False)),
    )


def default_buckets(max_len: int) -> tuple[int, ...]:
    """Length buckets: steps of 16 up to 256, then 32 up to 512, 64 up to 1024, 128 beyond;
    always ending at ``max_len`` (for lengths uniform in 16..256, ~5% of the positions are
    padding; steps of 32 would double that, powers of two make it ~25%)."""
    out, n = [], 16
    while n < max_len:
        out.append(n)
        n += 16 if n < 256 else 32 if n < 512 else 64 if n < 1024 else 128
    return (*out, max_len)


@dataclasses.dataclass(frozen=True)
class EncoderOptions:
    """What a caller may choose; ``None`` means "as the model directory says".

    dtype: "float32" or "bfloat16" (weights and activations; norms, softmax and pooling in fp32).
    batch_size: rows per compiled program, the same for every bucket; or, when None,
    batch_tokens: the token positions per program, so a bucket of length L gets
    max(1, batch_tokens // L) rows (matmuls of ~batch_tokens rows: big enough to be efficient,
    small enough to stay in cache; on a 2-core Xeon 2048 beats 32 fixed rows by ~15% at L=256).
    buckets: padded lengths, one compiled program each; default ``default_buckets``.
    pooling / normalize / max_seq_length: override the sentence-transformers head.
    attention: "auto" (the CPU kernel where it serves: CPU platform, float32, BERT family;
    else XLA's), "xla", or "cpu" (the kernel, or an error saying why it cannot be had).
    packing: sequences packed back to back into rows of max_seq_length tokens (one compiled
    program, padding only at the rows' ends) instead of length buckets; None: packed for the
    BERT family unless ``buckets`` or ``batch_size`` choose the bucketed layout; decoders are
    always bucketed.
    """

    dtype: str = "float32"
    batch_size: int | None = None
    batch_tokens: int = 2048
    buckets: tuple[int, ...] | None = None
    pooling: str | None = None
    normalize: bool | None = None
    max_seq_length: int | None = None
    attention: str = "auto"
    packing: bool | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.dtype not in DTYPES:
            problems.append(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.batch_size is not None and (
            not isinstance(self.batch_size, int) or self.batch_size < 1
        ):
            problems.append(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not isinstance(self.batch_tokens, int) or self.batch_tokens < 1:
            problems.append(f"batch_tokens must be a positive integer, got {self.batch_tokens!r}")
        if self.buckets is not None:
            b = tuple(self.buckets)
            if (
                not b
                or any(not isinstance(x, int) or x < 1 for x in b)
                or list(b) != sorted(set(b))
            ):
                problems.append(
                    f"buckets must be increasing positive integers, got {self.buckets!r}"
                )
            object.__setattr__(self, "buckets", b)
        if self.pooling is not None and self.pooling not in POOLING_MODES:
            problems.append(f"pooling {self.pooling!r} is not one of {', '.join(POOLING_MODES)}")
        if self.max_seq_length is not None and (
            not isinstance(self.max_seq_length, int) or self.max_seq_length < 2
        ):
            problems.append(f"max_seq_length must be an integer >= 2, got {self.max_seq_length!r}")
        if self.attention not in ATTENTION:
            problems.append(f"attention {self.attention!r} is not one of {', '.join(ATTENTION)}")
        if self.packing not in (None, True, False):
            problems.append(f"packing must be true or false, got {self.packing!r}")
        elif self.packing and (self.buckets is not None or self.batch_size is not None):
            problems.append(
                "packing lays sequences into rows of max_seq_length: buckets and batch_size "
                "choose the bucketed layout; give one or the other"
            )
        if problems:
            raise EncoderConfigError("; ".join(problems))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> EncoderOptions:
        """From spec options; unknown keys are errors that list the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise EncoderConfigError(
                f"unknown encoder option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        values = dict(values)
        if values.get("buckets") is not None:
            values["buckets"] = tuple(values["buckets"])
        return cls(**values)
