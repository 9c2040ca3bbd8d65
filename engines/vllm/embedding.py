"""VLLMEmbeddingEngine: embedding requests served by vLLM's pooling runner (``engine: vllm``,
``task: embedding``).

The same contract as the JAX encoder engine: a request carries one or more texts; each text is
tokenized as sentence-transformers does -- with vLLM's own tokenizer for the model, cut from the
right to the model's length (``max_model_len``, which vLLM takes from ``max_seq_length`` in
``sentence_bert_config.json``) with its special tokens kept, and flagged ``truncated`` -- so a
long text is embedded rather than refused (vLLM itself refuses a whole ``LLM.embed`` call when
one prompt is too long). Every text of every request in the call goes to one ``LLM.embed``;
vLLM pools and normalises as the model's sentence-transformers config says. ``dimensions``
truncates and renormalises here (vLLM only accepts it for Matryoshka models). Each request is
charged its texts' share of the call by tokens; an empty text or impossible ``dimensions`` is an
error result for that request only.

What it does not do: prefix caching and chunked prefill (vLLM supports neither for
bidirectional encoders; asking for prefix caching makes vLLM 0.32 fail at start-up), texts
longer than the model's position table (``max_seq_len`` above it is refused by vLLM), GGUF
models, and admitting new requests while a call runs (``serve`` is the base class's batches).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from hyperbatch.engines.base import EngineConfig, ModelInfo
from hyperbatch.engines.embedding import MAX_INPUTS, Embedded, EmbeddingEngine
from hyperbatch.engines.models import ModelNotFound, resolve_model
from hyperbatch.engines.options import EngineOptions
from hyperbatch.engines.vllm import args as vargs
from hyperbatch.engines.vllm.engine import shutdown
from hyperbatch.engines.vllm.options import VLLMOptions
from hyperbatch.schemas.records import Counters, ErrorCode, Request, RequestError


def pooling_args(config: EngineConfig, model_path: str) -> dict[str, Any]:
    """``vllm.LLM`` arguments for the pooling runner: the vLLM engine's, less the defaults that
    only suit generation (prefix caching, chunked prefill: vLLM picks them per model unless the
    job's options set them)."""
    args = vargs.engine_args(config, model_path)
    chosen = VLLMOptions.parse(config.options).llm_overrides()
    for key in ("enable_prefix_caching", "enable_chunked_prefill"):
        if key not in chosen:
            args.pop(key, None)
    args["runner"] = "pooling"
    return args


class VLLMEmbeddingEngine(EmbeddingEngine):
    name = "vllm"
    OPTIONS: ClassVar[type[EngineOptions]] = VLLMOptions

    def __init__(self, config: EngineConfig):
        super().__init__(config)
        t0 = time.perf_counter()
        self.options = VLLMOptions.parse(config.options)
        for key, value in vargs.engine_env(config).items():
            os.environ.setdefault(key, value)
        local = resolve_model(config.model, config.cache_dir)
        if local.format != "hf":
            raise ModelNotFound(
                f"{config.model} is a {local.format} file; embedding jobs need a Hugging Face or "
                "sentence-transformers model directory"
            )
        import vllm

        self.engine_args = pooling_args(config, local.path)
        self.llm = vllm.LLM(**self.engine_args)
        if "embed" not in self.llm.supported_tasks:
            tasks = self.llm.supported_tasks
            self.close()
            from hyperbatch.engines.registry import EngineNotAvailable

            raise EngineNotAvailable(
                f"vLLM's pooling runner serves {config.model} for {tasks}, not embeddings"
            )
        mc = self.llm.model_config
        self._tokenizer = self.llm.get_tokenizer()
        self._max_len = int(mc.max_model_len)
        self._lower = bool((mc.encoder_config or {}).get("do_lower_case", False))
        self.normalize = mc.pooler_config is None or mc.pooler_config.use_activation is not False
        self.dimensions = int(mc.embedding_size)
        self._info = ModelInfo(
            name=config.model,
            architecture=str(mc.hf_config.model_type),
            context_length=self._max_len,
            # texts are truncated, never refused: a request's bound is its inputs' count
            max_prompt_tokens=self._max_len * MAX_INPUTS,
            vocab_size=len(self._tokenizer),
        )
        self._stats = Counters(load_seconds=time.perf_counter() - t0)

    @property
    def info(self) -> ModelInfo:
        return self._info

    def tokenize(self, texts: Sequence[str]) -> tuple[list[list[int]], list[bool]]:
        """Token ids per text, cut to the model's length as sentence-transformers cuts them
        (``truncation="longest_first"``: specials kept), and whether each was cut."""
        if self._lower:
            texts = [t.lower() for t in texts]
        limit = self._max_len

        def encode(batch: Sequence[str], max_length: int) -> list[list[int]]:
            enc = self._tokenizer(
                list(batch), add_special_tokens=True, truncation=True, max_length=max_length
            )
            return [list(ids) for ids in enc["input_ids"]]

        ids = encode(texts, limit + 1)  # one token past the limit tells which are too long
        cut = [len(x) > limit for x in ids]
        long = [i for i, c in enumerate(cut) if c]
        if long:
            for i, shorter in zip(long, encode([texts[i] for i in long], limit), strict=True):
                ids[i] = shorter
        return ids, cut

    def prompt_tokens(self, request: Request) -> list[int]:
        if request.texts is None:
            raise RequestError(
                ErrorCode.ENGINE_REJECTED, "this engine embeds texts; the record has none"
            )
        ids, _ = self.tokenize(request.texts)
        return [i for x in ids for i in x]

    def warmup(self) -> None:
        """One short text, so vLLM's first-step setup is not paid by the first shard."""
        t0 = time.perf_counter()
        self.llm.embed(["warmup"], use_tqdm=False)
        self._stats.warmup_seconds += time.perf_counter() - t0

    def embed(self, texts: Sequence[str]) -> Embedded:
        ids, cut = self.tokenize(texts)
        t0 = time.perf_counter()
        outs = self.llm.embed([{"prompt_token_ids": x} for x in ids], use_tqdm=False)
        busy = time.perf_counter() - t0
        lengths = np.fromiter((len(x) for x in ids), np.int64, len(ids))
        errors = {j: str(o.error) for j, o in enumerate(outs) if o.error is not None}
        width = self.dimensions
        vectors = np.asarray(
            [o.outputs.embedding if o.error is None else [0.0] * width for o in outs], np.float32
        )
        return Embedded(
            vectors=vectors,
            lengths=lengths,
            truncated=np.asarray(cut, bool),
            busy_seconds=busy,
            # paged attention computes no padding: every position computed is a real token
            computed_token_slots=float(lengths.sum()),
            errors=errors,
        )

    def stats(self) -> Counters:
        return dataclasses.replace(self._stats)

    def close(self) -> None:
        shutdown(self)
