"""JaxLLMEngine: static-shape batched generation with slot refill and shared-prefix reuse.

How a ``generate()`` call runs (JetStream's prefill -> insert -> generate, with static shapes):

* ``batch_size`` decode slots share one KV cache of ``max_seq_len`` positions. One jitted decode
  program advances every slot by ``decode_steps`` tokens per call, sampling on device.
* Waiting requests are admitted into free slots by a prefill program per prompt-length bucket
  ``T`` (``prefill_buckets``), each over a fixed ``P = max(1, prefill_tokens // T)`` rows, which
  writes the prompt's K/V straight into the slots' cache rows and samples the first token. So the
  number of compiled programs is ``len(prefill_buckets) + 3`` (with the decode program and the
  guided step's two, below), whatever the data, and ``warmup()`` compiles them all. Slots whose request finished are refilled between decode calls.
* On a CPU (one device, float32) attention runs in our C++ kernel (``cpu_attention``), which
  reads each token's own cache row, so prefill is *packed* instead: every call takes
  ``prefill_tokens`` tokens from any mix of prompts, a long prompt continues in the next call,
  and no call is padded while decode work and waiting requests remain: the prompts of a
  round's last, part-full call are carried (holding their slots) into the next round, whose
  calls they help fill; ``prefill_buckets`` then only bound the prompt length, and the programs are four (prefill, decode, the guided step's two). ``attention: xla`` keeps the bucketed
  path TPUs and GPUs take. The kernel also lets a job's tail decode small: once at most
  ``tail_batch`` slots (default ``batch_size / 4``) are busy, a fifth program advances only
  those, each in its own cache row, so the last answers cost what they compute, not the batch.
* Shared prefixes: a chat prompt is split where the last message's content begins (system prompt,
  history, role header). That prefix is prefilled once into a prefix-store row (LRU,
  ``prefix_cache_rows`` rows) and copied into every slot that needs it; only the rest is
  prefilled per request (``Usage.cached_tokens``). The split depends only on the request itself,
  so a request computes the same numbers whatever else is in the batch.
* Sampling (temperature, top-k, top-p) runs on device; a request's draws come from its own seed
  and token counter, never from its slot. Stops (EOS, stop ids, stop strings, max_tokens, the end
  of the KV cache) are checked on the host after each decode call.
* Structured outputs and log-probabilities: a request with a constraint (``guided``: JSON schema,
  JSON object, regex, choice, grammar) gets an llguidance matcher per sequence (``grammar``); such
  requests, and those that want log-probabilities, advance one token per call through the
  guided step: the model's step, then a program that applies each slot's packed token bitmask on
  the device before sampling and returns the log-probabilities; the host builds the bitmasks
  while the device runs the model. Requests with and without constraints share the batch, and
  nothing is compiled per request (``scheduler``). ``n > 1`` choices are separate slots
  sharing the prompt's prefill.

The parts: ``options`` (typed engine_options), ``programs`` (weights, caches and the jitted
programs on the devices), ``scheduler`` (slots, admission, stops), ``prefix_store`` (which prefix
is in which store row), ``sampling`` and ``model`` (the device code). This module loads the model
and the tokenizer, picks the devices -- the accelerator's JAX platform, never another -- and
serves the Engine contract.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from typing import Any, ClassVar, cast

import jax
import ml_dtypes
import numpy as np

from hyperbatch import accelerators
from hyperbatch.engines import models
from hyperbatch.engines.base import Engine, EngineConfig, ModelInfo, OnResult, RequestSource
from hyperbatch.engines.jax_llm import cpu_attention, sharding, weights
from hyperbatch.engines.jax_llm.config import ModelConfig
from hyperbatch.engines.jax_llm.options import JaxOptions
from hyperbatch.engines.jax_llm.prefix_store import PrefixStore
from hyperbatch.engines.jax_llm.programs import DevicePrograms, Shapes
from hyperbatch.engines.jax_llm.scheduler import (
    Finish,
    Generation,
    Group,
    Key,
    SlotScheduler,
    WorkSource,
    seed_key,
)
from hyperbatch.engines.jax_llm.tokenizer import ChatTokenizer
from hyperbatch.engines.options import EngineOptions
from hyperbatch.schemas.records import Counters, ErrorCode, Request, RequestError, Result

_DTYPES = {
    "float32": np.float32,
    "fp32": np.float32,
    "bfloat16": ml_dtypes.bfloat16,
    "bf16": ml_dtypes.bfloat16,
}
DEFAULT_MAX_SEQ_LEN = 1024
DEFAULT_PREFIX_MAX = 512  # longest shared prefix kept in the store (system prompts and the like)
log = logging.getLogger(__name__)


class AcceleratorUnavailable(RuntimeError):
    """The job's accelerator is not what JAX sees here (the engine never falls back)."""


def enable_compilation_cache(path: str) -> None:
    """Persist compiled programs so a second run's warmup is a cache read."""
    if jax.config.jax_compilation_cache_dir:
        return  # the user (or an earlier engine) chose one
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _visible_devices() -> str:
    """What JAX sees on this machine, for error messages."""
    try:
        devices = jax.devices()
    except RuntimeError as e:  # no backend at all
        return f"no JAX backend ({e})"
    kinds = collections.Counter(d.platform for d in devices)
    return ", ".join(f"{n} {platform} device(s)" for platform, n in sorted(kinds.items()))


def accelerator_devices(accelerator: str, count: int) -> list[Any]:
    """``count`` devices of the accelerator's JAX platform; AcceleratorUnavailable otherwise."""
    acc = accelerators.get(accelerator)
    platform = acc.jax_platform
    try:
        devices = jax.devices(platform)
    except RuntimeError:
        devices = []
    if not devices:
        hint = {
            "tpu": "run it on a TPU worker (or a TPU VM) with 'hyperbatch[tpu]' installed",
            "gpu": "run it on a GPU machine with 'hyperbatch[gpu]' (JAX with CUDA) installed",
        }.get(acc.kind, "")
        raise AcceleratorUnavailable(
            f"accelerator {accelerator} needs JAX's {platform} backend, but JAX here sees "
            f"{_visible_devices()}; {hint}, or set accelerator: cpu to run on this machine's CPU"
        )
    n = max(1, int(count))
    if len(devices) < n:
        raise AcceleratorUnavailable(
            f"accelerator_count={n} but JAX sees {len(devices)} {platform} device(s): "
            f"{devices}; lower accelerator_count"
        )
    return devices[:n]


class JaxLLMEngine(Engine):
    """Llama-family models (Llama 2/3/3.1, Mistral, Qwen2, SmolLM2) in JAX; see module doc."""

    name = "jax"
    OPTIONS: ClassVar[type[EngineOptions]] = JaxOptions

    def __init__(self, config: EngineConfig):
        super().__init__(config)
        t0 = time.perf_counter()
        opt = cast(JaxOptions, self.OPTIONS.parse(config.options))  # a subclass's own options
        self.options = opt
        if config.dtype not in _DTYPES:
            raise ValueError(f"dtype {config.dtype!r} is not supported; use float32 or bfloat16")
        devices = accelerator_devices(config.accelerator, config.accelerator_count)
        enable_compilation_cache(
            opt.compilation_cache_dir
            or os.path.join(models.default_cache_dir(), "jax-compilation-cache")
        )

        cfg, host_params = self._read_checkpoint(
            models.resolve_model(config.model, config.cache_dir)
        )
        self.cfg: ModelConfig = cfg

        block = opt.attention_block
        seq = config.max_seq_len or min(cfg.max_position_embeddings, DEFAULT_MAX_SEQ_LEN)
        seq = min(seq, cfg.max_position_embeddings)
        self.max_seq_len = -(-seq // block) * block  # whole blocks
        buckets = list(opt.prefill_buckets or ())
        if not buckets:  # few programs, short warmup: 16, 64, 256, ... up to S
            cap = max(16, self.max_seq_len)
            b = 16
            while b < cap:
                buckets.append(b)
                b *= 4
            buckets.append(cap)
        self.buckets = sorted(int(b) for b in buckets)
        self.max_prompt = min(self.buckets[-1], self.max_seq_len - 1)
        self.batch = int(config.batch_size)
        store_rows = opt.prefix_cache_rows
        # a prompt may take the whole cache but one position; the completion gets the rest
        prefix_max = min(opt.prefix_max_tokens or DEFAULT_PREFIX_MAX, self.max_prompt)
        self.prefix_min, self.prefix_max = opt.prefix_min_tokens, -(-prefix_max // block) * block

        eos = set(cfg.eos_token_ids)
        if self.tokenizer.eos_id is not None:
            eos.add(self.tokenizer.eos_id)
        self.eos_ids = frozenset(eos)

        mesh = None
        if len(devices) > 1:
            data, tp = sharding.plan_mesh(
                len(devices), cfg, self.batch, opt.tensor_parallel, opt.data_parallel
            )
            mesh = sharding.make_mesh(devices, data, tp)
        self._stats = Counters()
        self.attention = self._choose_attention(opt.attention, devices[0], mesh)
        # With the CPU kernel, prefill packs tokens of many prompts into one call (no padding
        # but the last call's tail, one program whatever the prompt lengths).
        self.packed = self.attention == "cpu"
        tail = opt.tail_batch_for(self.batch, self.packed)
        if tail and not self.packed:
            raise ValueError(
                f"tail_batch needs the CPU attention kernel (attention is {self.attention})"
            )
        elif tail >= self.batch:
            raise ValueError(f"tail_batch={tail} must be below batch_size={self.batch}")
        shapes = Shapes(
            batch=self.batch,
            max_seq_len=self.max_seq_len,
            block=block,
            steps=opt.decode_steps,
            store_rows=store_rows,
            prefix_max=self.prefix_max,
            prefill_tokens=opt.prefill_tokens,
            pieces=max(1, min(self.batch, opt.prefill_tokens // 8)),
            rows_per_bucket={t: max(1, opt.prefill_tokens // t) for t in self.buckets},
            tail_batch=tail,
        )
        self.programs = self._make_programs(
            cfg, host_params, devices, shapes, _DTYPES[config.dtype], self.attention, mesh
        )
        del host_params
        self.store = PrefixStore(store_rows)
        self.scheduler = SlotScheduler(
            self.programs,
            self.tokenizer,
            self.store,
            self._stats,
            buckets=self.buckets,
            packed=self.packed,
            refill_min=opt.refill_min_for(self.batch, self.packed),
        )
        self._grammars: Any = None  # grammar.Grammars, built with the first constraint
        self._stats.load_seconds = time.perf_counter() - t0

    # -- setup -------------------------------------------------------------------------------
    # Two hooks for engines built on this one (engines/jax_vlm): how a checkpoint is read, and
    # the device programs class.

    def _read_checkpoint(self, local: models.LocalModel) -> tuple[ModelConfig, Any]:
        """(config, host params) of the text model; sets ``self.tokenizer``."""
        if local.format == "gguf":
            cfg, tensors, meta = weights.load_gguf(local.path)
            self.tokenizer = ChatTokenizer.from_gguf(meta)
        else:
            cfg, tensors = weights.load_hf(local.path)
            self.tokenizer = ChatTokenizer.from_hf_dir(local.path)
        return cfg, weights.to_params(cfg, tensors, _DTYPES[self.config.dtype])

    def _make_programs(self, *args: Any) -> DevicePrograms:
        return DevicePrograms(*args)

    def _choose_attention(self, requested: str, device: Any, mesh: Any) -> str:
        """``cpu`` (our kernel) where it serves this engine, else ``xla``; ``auto`` says why
        it falls back on a CPU, ``cpu`` refuses to."""
        if requested == "xla":
            return "xla"
        cfg = self.cfg
        reason: str | None
        if device.platform != "cpu":
            reason = f"the device is a {device.platform}, not a CPU"
        elif mesh is not None:
            reason = "the model is sharded over several devices"
        elif _DTYPES[self.config.dtype] is not np.float32:
            reason = f"dtype is {self.config.dtype}, the kernel computes float32"
        else:
            reason = cpu_attention.supports(cfg.num_heads, cfg.num_kv_heads)
        if reason is None:
            try:
                cpu_attention.load(self.config.cache_dir)
                return "cpu"
            except cpu_attention.KernelUnavailable as e:
                reason = str(e)
        if requested == "cpu":
            raise ValueError(f"attention=cpu is not available: {reason}; use attention=auto")
        if device.platform == "cpu":
            log.warning("jax engine: XLA attention instead of the CPU kernel: %s", reason)
        return "xla"

    # -- contract ----------------------------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            name=self.config.model,
            architecture=self.cfg.architecture,
            context_length=self.max_seq_len,
            max_prompt_tokens=self.max_prompt,
            vocab_size=self.cfg.vocab_size,
            eos_token_ids=tuple(sorted(self.eos_ids)),
        )

    @property
    def mesh(self) -> Any:
        return self.programs.mesh

    def prompt_tokens(self, request: Request) -> list[int]:
        if request.messages is not None:
            if not request.messages:
                raise RequestError(ErrorCode.EMPTY_MESSAGES, "messages is empty")
            return self.tokenizer.encode_chat(request.messages, request.tools)
        return self.tokenizer.encode_prompt(request.prompt or "")

    def grammars(self) -> Any:
        """The constraint compiler (``grammar.Grammars``) for this model's tokenizer, built on
        first use; RequestError when llguidance is not installed."""
        if self._grammars is None:
            try:
                from hyperbatch.engines import grammar
            except ImportError as e:
                raise RequestError(
                    ErrorCode.UNSUPPORTED_GUIDED,
                    f"structured outputs need llguidance, which is not installed here ({e}); "
                    "install hyperbatch[jax] (or pip install llguidance)",
                ) from e
            try:
                self._grammars = grammar.Grammars(
                    self.tokenizer.tokenizer.to_str(), self.cfg.vocab_size, self.eos_ids
                )
            except ValueError as e:
                raise RequestError(
                    ErrorCode.UNSUPPORTED_GUIDED,
                    f"llguidance cannot read this model's tokenizer: {e}",
                ) from e
            self.scheduler.masks = self._grammars
        return self._grammars

    def compilations(self) -> int:
        """Programs compiled by this engine so far (bounded by the shape buckets)."""
        return self.programs.compilations()

    def stats(self) -> Counters:
        self._stats.compilations = self.compilations()
        return dataclasses.replace(self._stats)

    def warmup(self) -> None:
        t0 = time.perf_counter()
        self.programs.warmup(self.buckets, self.packed)
        self._stats.warmup_seconds += time.perf_counter() - t0

    def clear_prefix_cache(self) -> None:
        """Forget stored prefixes (benchmarks measure cold runs with it)."""
        self.store.clear()

    def close(self) -> None:
        self.programs.close()

    # -- serving ------------------------------------------------------------------------------

    def _prepare(self, key: Key, request: Request) -> list[Generation]:
        """The sequences of a request (one per choice), or RequestError."""
        sp = request.sampling
        if sp.presence_penalty or sp.frequency_penalty:
            raise RequestError(
                ErrorCode.ENGINE_REJECTED,
                "presence/frequency penalties are not supported by the jax engine; set them to 0",
            )
        ids = list(request.prompt_token_ids or self.prompt_tokens(request))
        if not ids:
            raise RequestError(ErrorCode.ENGINE_REJECTED, "the prompt is empty (0 tokens)")
        if len(ids) > self.max_prompt:
            raise RequestError(
                ErrorCode.PROMPT_TOO_LONG,
                f"prompt has {len(ids)} tokens; this engine accepts at most {self.max_prompt} "
                f"(raise max_seq_len or prefill_buckets, or shorten the prompt)",
            )
        if max(ids) >= self.cfg.vocab_size or min(ids) < 0:
            raise RequestError(ErrorCode.ENGINE_REJECTED, "prompt token id outside the vocabulary")
        matchers = [None] * sp.n
        if sp.guided is not None:
            grammars = self.grammars()
            matchers = [grammars.matcher(sp.guided) for _ in range(sp.n)]
        stepwise = sp.guided is not None or sp.logprobs is not None
        prefix = self._prefix(request, ids, len(ids) - 1 if stepwise else len(ids))
        group = Group(key, request, sp.n) if sp.n > 1 else None
        stop_ids = frozenset(sp.stop_token_ids) | (frozenset() if sp.ignore_eos else self.eos_ids)
        return [
            Generation(
                key=key,
                request=request,
                ids=ids,
                prefix_len=prefix,
                limit=min(sp.max_tokens, self.max_seq_len - len(ids)),
                key_data=seed_key(sp.seed, index),
                stop_ids=stop_ids,
                matcher=matchers[index],
                group=group,
                index=index,
                logprobs=[] if sp.logprobs is not None else None,
            )
            for index in range(sp.n)
        ]

    def _prefix(self, request: Request, ids: list[int], prefill_end: int) -> int:
        """Leading tokens to take from the prefix store: the whole prompt when several choices
        share it (n > 1), else the chat's system prompt and history; 0 when none fits."""
        if not self.store.rows:
            return 0
        if request.sampling.n > 1 and self.prefix_min <= prefill_end - 1 <= self.prefix_max:
            return prefill_end - 1
        if not request.messages:
            return 0
        prefix = self.tokenizer.chat_prefix(request.messages, ids, request.tools)
        ok = self.prefix_min <= prefix <= self.prefix_max and prefix < prefill_end
        return prefix if ok else 0

    def generate(
        self, requests: Sequence[Request], on_result: OnResult | None = None
    ) -> list[Result]:
        results: list[Result | None] = [None] * len(requests)

        def finish(key: Key, res: Result) -> None:
            assert isinstance(key, int)
            results[key] = res
            if on_result is not None:
                on_result(res)

        self._run(_Indexed(requests), finish)
        return [r for r in results if r is not None]

    def serve(self, source: RequestSource, on_result: OnResult) -> None:
        """The engine loop: slots are refilled from ``source`` between decode calls."""
        self._run(_Keyed(source), lambda _key, res: on_result(res))

    def _run(self, source: WorkSource, finish: Finish) -> None:
        def counted(key: Key, res: Result) -> None:
            st = self._stats
            st.records += 1
            st.results += int(res.ok)
            st.errors += int(not res.ok)
            st.prompt_tokens += res.usage.prompt_tokens
            st.completion_tokens += res.usage.completion_tokens
            st.cached_tokens += res.usage.cached_tokens
            finish(key, res)

        try:
            self.scheduler.run(source, self._prepare, counted)
        except BaseException:
            # A device or runtime failure is not the records' fault: leave the engine usable
            # (donated buffers may be gone, and with them the stored prefixes) and let it fail
            # the work in flight, which a rerun (or Beam's bundle retry) serves again, instead
            # of committing error records.
            self.programs.reset_caches()
            self.store.clear()
            raise


class _Indexed:
    """A fixed list, keyed by position (``generate``)."""

    def __init__(self, requests: Sequence[Request]):
        self._items: list[tuple[Key, Request]] = list(enumerate(requests))

    def take(self, max_n: int, wait: bool) -> list[tuple[Key, Request]] | None:
        if not self._items:
            return None
        out, self._items = self._items[:max_n], self._items[max_n:]
        return out


class _Keyed:
    """Any request source; results go back by the request itself (``serve``)."""

    def __init__(self, source: RequestSource):
        self.source = source

    def take(self, max_n: int, wait: bool) -> list[tuple[Key, Request]] | None:
        taken = self.source.take(max_n, wait)
        return None if taken is None else [(id(r), r) for r in taken]
