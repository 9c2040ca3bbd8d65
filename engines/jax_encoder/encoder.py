"""The host-side encoder: load a model directory, tokenize, and embed token-id lists in static-shape
calls: sequences packed back to back into rows of max_seq_length tokens (one compiled program;
the BERT family's default), or batches with one compiled program per length bucket.

Invariants:
- ``warmup()`` compiles every bucket's program; after it, ``encode`` never compiles (programs are
  compiled ahead of time, so a shape outside the plan is an error, not a silent recompile). The
  count is ``stats.compilations`` and depends on the buckets only, never on the data.
- ``encode`` returns vectors in input order; each row's vector depends only on its own tokens
  (padding rows and positions are masked out of attention and pooling).
- ``stats`` counts the token positions computed (``rows_for(bucket) * bucket`` per batch) against the
  useful ones (real tokens): their ratio is the padding waste.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Iterator, Sequence
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np

from hyperbatch.engines.jax_encoder import backbones, batching
from hyperbatch.engines.jax_encoder.config import (
    EncoderConfigError,
    EncoderOptions,
    SentenceHead,
    default_buckets,
    sentence_head,
)
from hyperbatch.engines.jax_encoder.pooling import l2_normalize, pool, pool_packed
from hyperbatch.engines.jax_encoder.tokenizer import TextTokenizer, Tokenized

TokenIds: TypeAlias = Sequence[int] | np.ndarray  # one sequence's ids, special tokens included


@dataclasses.dataclass(frozen=True)
class EncodeStats:
    """Cumulative counters; subtract two snapshots for one call's share."""

    compilations: int = 0
    batches: int = 0
    sequences: int = 0
    computed_tokens: int = 0  # positions the device computed (rows * bucket per batch)
    useful_tokens: int = 0  # real tokens among them
    useful_flops: float = 0.0  # model FLOPs of the real tokens (Backbone.flops_per_token)
    busy_seconds: float = 0.0  # wall time inside encode()

    @property
    def padding_waste(self) -> float:
        """Fraction of computed token positions that were padding."""
        return 1.0 - self.useful_tokens / self.computed_tokens if self.computed_tokens else 0.0

    def __add__(self, other: EncodeStats) -> EncodeStats:
        return EncodeStats(
            *(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self))
        )

    def __sub__(self, other: EncodeStats) -> EncodeStats:
        return EncodeStats(
            *(getattr(self, f.name) - getattr(other, f.name) for f in dataclasses.fields(self))
        )


def _embed(params, tokens, lengths, *, hidden, pooling: str, normalize: bool):
    vectors = pool(hidden(params, tokens, lengths), lengths, pooling)
    return l2_normalize(vectors) if normalize else vectors


def _embed_packed(
    params, tokens, positions, segments, starts, lengths, *, hidden, pooling: str, normalize: bool
):
    states = hidden(params, tokens, positions, segments, starts, lengths)
    vectors = pool_packed(states, segments, starts, lengths, pooling)
    return l2_normalize(vectors) if normalize else vectors


class Encoder:
    """Embeds texts with a BERT-family or decoder model, as sentence-transformers would."""

    def __init__(
        self,
        backbone: backbones.Backbone,
        head: SentenceHead,
        tokenizer: TextTokenizer,
        options: EncoderOptions,
    ):
        self.backbone = backbone
        self.head = head
        self.tokenizer = tokenizer
        self.options = options
        top = head.max_seq_length
        bucketed = options.buckets is not None or options.batch_size is not None
        self.packed = (
            options.packing
            if options.packing is not None
            else backbone.hidden_packed is not None and not bucketed
        )
        if self.packed and backbone.hidden_packed is None:
            raise EncoderConfigError(
                f"packing serves the BERT family; {backbone.architecture} is bucketed "
                "(leave packing unset)"
            )
        if self.packed:
            self.buckets: tuple[int, ...] = (top,)  # one row width, one program
        else:
            self.buckets = (*(b for b in (options.buckets or default_buckets(top)) if b < top), top)
        self._programs: dict[int, Any] = {}
        self._stats = EncodeStats()
        pooling, normalize = head.pooling, head.normalize
        self._embed = jax.jit(
            functools.partial(_embed, hidden=backbone.hidden, pooling=pooling, normalize=normalize)
        )
        self._embed_packed = (
            jax.jit(
                functools.partial(
                    _embed_packed,
                    hidden=backbone.hidden_packed,
                    pooling=pooling,
                    normalize=normalize,
                )
            )
            if self.packed
            else None
        )

    @classmethod
    def load(
        cls, model_dir: str, options: EncoderOptions | None = None, **overrides: Any
    ) -> Encoder:
        """Load ``model_dir`` (a sentence-transformers or Hugging Face directory).

        ``overrides`` are ``EncoderOptions`` fields (``dtype``, ``batch_size``, ``batch_tokens``,
        ``buckets``, ``pooling``, ``normalize``, ``max_seq_length``, ``attention``), applied on
        top of ``options``; unknown ones raise ``EncoderConfigError``.
        """
        values = dataclasses.asdict(options) if options else {}
        options = EncoderOptions.from_mapping({**values, **overrides})
        backbone = backbones.load(model_dir, options.dtype, options.attention)
        _, config = backbones.model_type(model_dir)
        head = sentence_head(model_dir, config, backbone.decoder)
        head = dataclasses.replace(
            head,
            pooling=options.pooling or head.pooling,
            normalize=head.normalize if options.normalize is None else options.normalize,
            max_seq_length=options.max_seq_length or head.max_seq_length,
        )
        if head.max_seq_length > backbone.max_length:
            raise EncoderConfigError(
                f"max_seq_length {head.max_seq_length} exceeds the model's "
                f"{backbone.max_length} positions; pass max_seq_length <= {backbone.max_length}"
            )
        tokenizer = TextTokenizer.from_dir(model_dir, head.max_seq_length, head.do_lower_case)
        return cls(backbone, head, tokenizer, options)

    # -- facts a wrapper reports ----------------------------------------------------------------

    @property
    def dimensions(self) -> int:
        return self.backbone.hidden_size

    @property
    def max_seq_length(self) -> int:
        return self.head.max_seq_length

    @property
    def slots(self) -> int:
        """Packed: the most sequences one call holds (each at least 4 tokens fills it)."""
        top = self.buckets[-1]
        return max(1, self.rows_for(top) * top // 4)

    def rows_for(self, bucket: int) -> int:
        """The fixed number of rows of ``bucket``'s program."""
        if self.options.batch_size is not None:
            return self.options.batch_size
        return max(1, self.options.batch_tokens // bucket)

    @property
    def stats(self) -> EncodeStats:
        return self._stats

    # -- work ------------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> Tokenized:
        """Token ids (truncated to ``max_seq_length`` as sentence-transformers does), whether
        each text was truncated, and each one's token count."""
        return self.tokenizer(texts)

    def warmup(self) -> None:
        """Compile every bucket's program (once per encoder; no-op afterwards)."""
        for bucket in self.buckets:
            self._program(bucket)

    def encode(self, ids: Sequence[TokenIds]) -> np.ndarray:
        """Vectors [N, dimensions] float32 for token-id sequences (from ``tokenize``), in order."""
        arrays = [np.asarray(x, dtype=np.int32) for x in ids]
        self._check(arrays)
        out = np.zeros((len(arrays), self.dimensions), np.float32)
        start = time.perf_counter()
        batches = computed = useful = 0
        flops = 0.0
        pending: tuple[np.ndarray, jax.Array] | None = None
        params = self.backbone.params
        calls: Iterator[tuple[np.ndarray, np.ndarray, jax.Array, int]]
        if self.packed:
            width = self.buckets[0]
            program = self._program(width)
            calls = (
                (b.seqs, b.lengths[: len(b.seqs)], program(params, *b[1:]), b.tokens.size)
                for b in batching.packed_batches(arrays, width, self.rows_for(width), self.slots)
            )  # fmt: skip
        else:
            calls = (
                (b.rows, b.lengths[: len(b.rows)],
                 self._program(b.bucket)(params, b.tokens, b.lengths), b.tokens.size)
                for b in batching.batches(arrays, self.rows_for, self.buckets)
            )  # fmt: skip
        for rows, real, result, size in calls:
            if pending is not None:  # collect the previous call while this one runs
                out[pending[0]] = np.asarray(pending[1])[: len(pending[0])]
            pending = (rows, result)
            batches += 1
            computed += size
            useful += int(real.sum())
            flops += float(sum(int(n) * self.backbone.flops_per_token(int(n)) for n in real))
        if pending is not None:
            out[pending[0]] = np.asarray(pending[1])[: len(pending[0])]
        self._stats += EncodeStats(
            batches=batches,
            sequences=len(arrays),
            computed_tokens=computed,
            useful_tokens=useful,
            useful_flops=flops,
            busy_seconds=time.perf_counter() - start,
        )
        return out

    def encode_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, Tokenized]:
        tokens = self.tokenize(texts)
        return self.encode(tokens.ids), tokens

    # -- internals -------------------------------------------------------------------------------

    def _check(self, arrays: list[np.ndarray]) -> None:
        vocab = self.backbone.vocab_size
        for i, a in enumerate(arrays):
            if a.ndim != 1 or not 1 <= len(a) <= self.buckets[-1]:
                raise ValueError(
                    f"sequence {i} has {len(a)} tokens; each needs 1..{self.buckets[-1]} "
                    "(tokenize with the encoder: it truncates to max_seq_length)"
                )
            if a.min() < 0 or a.max() >= vocab:
                raise ValueError(
                    f"sequence {i} has token ids outside the vocabulary (0..{vocab - 1})"
                )

    def _program(self, bucket: int):
        program = self._programs.get(bucket)
        if program is None:
            rows = jax.ShapeDtypeStruct((self.rows_for(bucket), bucket), jnp.int32)
            if self._embed_packed is not None:
                slots = jax.ShapeDtypeStruct((self.slots,), jnp.int32)
                shapes: tuple[Any, ...] = (rows, rows, rows, slots, slots)
                program = self._embed_packed.lower(self.backbone.params, *shapes).compile()
            else:
                shapes = (rows, jax.ShapeDtypeStruct((self.rows_for(bucket),), jnp.int32))
                program = self._embed.lower(self.backbone.params, *shapes).compile()
            self._programs[bucket] = program
            self._stats += EncodeStats(compilations=1)
        return program
