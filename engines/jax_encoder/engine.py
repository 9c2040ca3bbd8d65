"""JaxEncoderEngine: embedding requests served by our JAX encoder (``engine: jax``,
``task: embedding``).

A request carries one or more texts (an OpenAI ``input`` array is one request); the engine
tokenizes them as sentence-transformers does (truncating to the model's length and saying so),
embeds every text of every request in the call together -- sorted into length buckets, one
compiled program per bucket, a fixed number of rows each -- and returns one result per request
with its vectors in order, ``dimensions`` applied (truncated and renormalised). Each request is
charged its texts' share of the device work (by useful tokens). A request that cannot be served
(an empty text, more dimensions than the model has) is an error result for that request only.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import ClassVar

from hyperbatch.engines import models
from hyperbatch.engines.base import EngineConfig, ModelInfo
from hyperbatch.engines.embedding import MAX_INPUTS, Embedded, EmbeddingEngine
from hyperbatch.engines.jax_encoder.config import EncoderOptions
from hyperbatch.engines.jax_encoder.encoder import Encoder
from hyperbatch.engines.jax_encoder.options import EncoderEngineOptions
from hyperbatch.engines.jax_llm.engine import accelerator_devices
from hyperbatch.engines.options import EngineOptions
from hyperbatch.schemas.records import Counters, ErrorCode, Request, RequestError


class JaxEncoderEngine(EmbeddingEngine):
    name = "jax"
    OPTIONS: ClassVar[type[EngineOptions]] = EncoderEngineOptions

    def __init__(self, config: EngineConfig):
        super().__init__(config)
        t0 = time.perf_counter()
        opt = EncoderEngineOptions.parse(config.options)
        accelerator_devices(config.accelerator, config.accelerator_count)  # or refuse: no fallback
        local = models.resolve_model(config.model, config.cache_dir)
        if local.format != "hf":
            raise models.ModelNotFound(
                f"{config.model} is a {local.format} file; embedding jobs need a Hugging Face or "
                "sentence-transformers model directory"
            )
        dtype = "bfloat16" if config.dtype in ("bfloat16", "bf16") else "float32"
        self.encoder = Encoder.load(
            local.path,
            EncoderOptions(
                dtype=dtype,
                batch_tokens=opt.batch_tokens,
                buckets=opt.buckets,
                pooling=opt.pooling,
                normalize=opt.normalize,
                max_seq_length=opt.max_seq_length,
                attention=opt.attention,
                packing=opt.packing,
            ),
        )
        self.dimensions = self.encoder.dimensions
        self.normalize = self.encoder.head.normalize
        self._stats = Counters(load_seconds=time.perf_counter() - t0)

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            name=self.config.model,
            architecture="encoder" if not self.encoder.backbone.decoder else "decoder-embedder",
            context_length=self.encoder.max_seq_length,
            # texts are truncated, never refused: a request's bound is its inputs' count
            max_prompt_tokens=self.encoder.max_seq_length * MAX_INPUTS,
            vocab_size=self.encoder.backbone.vocab_size,
        )

    def prompt_tokens(self, request: Request) -> list[int]:
        if request.texts is None:
            raise RequestError(
                ErrorCode.ENGINE_REJECTED, "this engine embeds texts; the record has none"
            )
        tokens = self.encoder.tokenize(list(request.texts))
        return [int(i) for ids in tokens.ids for i in ids]

    def warmup(self) -> None:
        t0 = time.perf_counter()
        self.encoder.warmup()
        self._stats.warmup_seconds += time.perf_counter() - t0

    def stats(self) -> Counters:
        self._stats.compilations = self.encoder.stats.compilations
        return dataclasses.replace(self._stats)

    def embed(self, texts: Sequence[str]) -> Embedded:
        before = self.encoder.stats
        tokens = self.encoder.tokenize(list(texts))
        vectors = self.encoder.encode(tokens.ids)
        done = self.encoder.stats - before
        return Embedded(
            vectors=vectors,
            lengths=tokens.lengths,
            truncated=tokens.truncated,
            busy_seconds=done.busy_seconds,
            computed_token_slots=done.computed_tokens,
        )
