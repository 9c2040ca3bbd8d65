"""JaxLLMEngine: static-shape batched generation with slot refill and shared-prefix reuse.

How a ``generate()`` call runs (JetStream's prefill -> insert -> generate, with static shapes):

* ``batch_size`` decode slots share one KV cache of ``max_seq_len`` positions. One jitted decode
  program advances every slot by ``decode_steps`` tokens per call, sampling on device.
* Waiting requests are admitted into free slots by a prefill program per prompt-length bucket
  ``T`` (``prefill_buckets``), each over a fixed ``P = max(1, prefill_tokens // T)`` rows, which
  writes the prompt's K/V straight into the slots' cache rows and samples the first token. So the
  number of compiled programs is ``len(prefill_buckets) + 1``, whatever the data, and ``warmup()``
  compiles them all. Slots whose request finished are refilled between decode calls.
* On a CPU (one device, float32) attention runs in our C++ kernel (``cpu_attention``), which
  reads each token's own cache row, so prefill is *packed* instead: every call takes
  ``prefill_tokens`` tokens from any mix of prompts, a long prompt continues in the next call,
  and the only padding is the last call's tail; ``prefill_buckets`` then only bound the prompt
  length, and the programs are two (prefill, decode). ``attention: xla`` keeps the bucketed
  path TPUs and GPUs take.
* Shared prefixes: a chat prompt is split where the last message's content begins (system prompt,
  history, role header). That prefix is prefilled once into a prefix-store row (LRU,
  ``prefix_cache_rows`` rows) and copied into every slot that needs it; only the rest is
  prefilled per request (``Usage.cached_tokens``). The split depends only on the request itself,
  so a request computes the same numbers whatever else is in the batch.
* Sampling (temperature, top-k, top-p) runs on device; a request's draws come from its own seed
  and token counter, never from its slot. Stops (EOS, stop ids, stop strings, max_tokens, the end
  of the KV cache) are checked on the host after each decode call.

Options (``EngineConfig.options``; unknown keys are refused): see ``OPTIONS``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import os
import secrets
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_dtypes
import numpy as np

from hyperbatch.engines import models
from hyperbatch.engines.base import Engine, EngineConfig, ModelInfo, OnResult
from hyperbatch.engines.jax_llm import cpu_attention, model, sharding, weights
from hyperbatch.engines.jax_llm.config import ModelConfig
from hyperbatch.engines.jax_llm.tokenizer import ChatTokenizer
from hyperbatch.schemas.records import (
    Counters,
    ErrorCode,
    FinishReason,
    Request,
    RequestError,
    Result,
    Usage,
)

#: option -> (default, description). Defaults that depend on the model are None here.
OPTIONS: dict[str, tuple[Any, str]] = {
    "prefill_buckets": (None, "prompt-length buckets (default 16, 64, 256, ... max_seq_len/2)"),
    "prefill_tokens": (256, "tokens per prefill call (by bucket: P = max(1, this // bucket) rows)"),
    "decode_steps": (8, "decode steps per device call (tokens per slot between host checks)"),
    "attention_block": (64, "KV-cache block walked by the attention loop"),
    "prefix_cache_rows": (8, "rows of the shared-prefix store (0 disables prefix reuse)"),
    "prefix_max_tokens": (None, "longest reusable prefix (default: largest bucket)"),
    "prefix_min_tokens": (8, "shortest prefix worth reusing"),
    "refill_min_free": (None, "admit waiting requests once this many slots are free"),
    "tensor_parallel": (None, "devices on the 'model' mesh axis (default: gcd(devices, KV heads))"),
    "data_parallel": (None, "devices on the 'data' mesh axis (default: the rest)"),
    "compilation_cache_dir": (None, "JAX persistent compilation cache (default under the cache)"),
    "attention": ("auto", "auto | cpu (the C++ kernel; CPU, one device, float32) | xla"),
}
ATTENTION = ("auto", "cpu", "xla")

_DTYPES = {
    "float32": np.float32,
    "fp32": np.float32,
    "bfloat16": ml_dtypes.bfloat16,
    "bf16": ml_dtypes.bfloat16,
}
DEFAULT_MAX_SEQ_LEN = 1024
log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class _Seq:
    """A request on its way through the engine."""

    index: int  # position in the generate() call
    request: Request
    ids: list[int]
    prefix_len: int  # leading tokens served from the prefix store (0 = none)
    limit: int  # max new tokens (max_tokens bounded by the KV cache)
    key: np.ndarray  # [2] uint32 sampling key data
    stop_ids: frozenset[int]
    slot: int = -1
    cached: int = 0
    out: list[int] = dataclasses.field(default_factory=list)


def _bucket(n: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if n <= b:
            return b
    raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")


def _seed_key(seed: int | None) -> np.ndarray:
    if seed is None:
        seed = secrets.randbits(63)
    return np.array([(seed >> 32) & 0xFFFFFFFF, seed & 0xFFFFFFFF], dtype=np.uint32)


def enable_compilation_cache(path: str) -> None:
    """Persist compiled programs so a second run's warmup is a cache read."""
    if jax.config.jax_compilation_cache_dir:
        return  # the user (or an earlier engine) chose one
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class JaxLLMEngine(Engine):
    """Llama-family models (Llama 2/3/3.1, Mistral, Qwen2, SmolLM2) in JAX; see module doc."""

    name = "jax"

    def __init__(self, config: EngineConfig):
        super().__init__(config)
        t0 = time.perf_counter()
        unknown = sorted(set(config.options) - set(OPTIONS))
        if unknown:
            raise ValueError(
                f"unknown jax engine option(s) {', '.join(unknown)}; "
                f"supported: {', '.join(sorted(OPTIONS))}"
            )
        opt = {k: config.options.get(k, d) for k, (d, _) in OPTIONS.items()}
        if config.dtype not in _DTYPES:
            raise ValueError(f"dtype {config.dtype!r} is not supported; use float32 or bfloat16")
        enable_compilation_cache(
            opt["compilation_cache_dir"]
            or os.path.join(models.default_cache_dir(), "jax-compilation-cache")
        )

        local = models.resolve_model(config.model, config.cache_dir)
        if local.format == "gguf":
            cfg, tensors, meta = weights.load_gguf(local.path)
            self.tokenizer = ChatTokenizer.from_gguf(meta)
        else:
            cfg, tensors = weights.load_hf(local.path)
            self.tokenizer = ChatTokenizer.from_hf_dir(local.path)
        self.cfg: ModelConfig = cfg
        host_params = weights.to_params(cfg, tensors, _DTYPES[config.dtype])
        del tensors

        self.block = int(opt["attention_block"])
        seq = config.max_seq_len or min(cfg.max_position_embeddings, DEFAULT_MAX_SEQ_LEN)
        seq = min(seq, cfg.max_position_embeddings)
        self.max_seq_len = -(-seq // self.block) * self.block  # whole blocks
        buckets = opt["prefill_buckets"]
        if buckets is None:  # few programs, short warmup: 16, 64, 256, ... up to S/2
            cap = max(16, self.max_seq_len // 2)
            buckets, b = [], 16
            while b < cap:
                buckets.append(b)
                b *= 4
            buckets.append(cap)
        self.buckets = sorted(int(b) for b in buckets)
        self.max_prompt = min(self.buckets[-1], self.max_seq_len - 1)
        self.prefill_tokens = int(opt["prefill_tokens"])
        self.rows = {t: max(1, self.prefill_tokens // t) for t in self.buckets}
        self.steps = int(opt["decode_steps"])
        self.batch = int(config.batch_size)
        self.refill_min = int(opt["refill_min_free"] or max(1, self.batch // 8))
        self.store_rows = int(opt["prefix_cache_rows"])
        self.prefix_max = min(int(opt["prefix_max_tokens"] or self.buckets[-1]), self.max_prompt)
        self.prefix_max = -(-self.prefix_max // self.block) * self.block
        self.prefix_min = int(opt["prefix_min_tokens"])

        eos = set(cfg.eos_token_ids)
        if self.tokenizer.eos_id is not None:
            eos.add(self.tokenizer.eos_id)
        self.eos_ids = frozenset(eos)

        devices = self._devices()
        self.mesh = None
        if len(devices) > 1:
            data, tp = sharding.plan_mesh(
                len(devices), cfg, self.batch, opt["tensor_parallel"], opt["data_parallel"]
            )
            self.mesh = sharding.make_mesh(devices, data, tp)
            self.params = sharding.put(
                host_params, sharding.param_shardings(host_params, self.mesh)
            )
        else:
            self.params = jax.device_put(host_params, devices[0])
        self._device = devices[0]
        del host_params
        self.attention = self._choose_attention(str(opt["attention"]))
        self._alloc_cache()
        self._store_index: collections.OrderedDict[tuple[int, ...], int] = collections.OrderedDict()

        self._prefill = jax.jit(
            functools.partial(model.prefill, cfg=cfg, block=self.block, attention=self.attention),
            donate_argnames=("cache", "store"),
        )
        # With the CPU kernel, prefill packs tokens of many prompts into one call (no padding
        # but the last call's tail, one program whatever the prompt lengths).
        self.packed = self.attention == "cpu"
        self.pieces = max(1, min(self.batch, self.prefill_tokens // 8))  # Q: pieces per call
        self._prefill_packed = jax.jit(
            functools.partial(
                model.prefill_packed, cfg=cfg, block=self.block, attention=self.attention
            ),
            donate_argnames=("cache", "store"),
        )
        self._decode = jax.jit(
            functools.partial(
                model.decode, cfg=cfg, block=self.block, steps=self.steps, attention=self.attention
            ),
            donate_argnames=("cache",),
        )
        self._stats = Counters(load_seconds=time.perf_counter() - t0)

    # -- setup -------------------------------------------------------------------------------

    def _devices(self) -> list[Any]:
        acc = self.config.accelerator
        backend = None if acc in ("tpu", "gpu", "auto") else "cpu"
        devices = jax.devices(backend) if backend else jax.devices()
        n = max(1, int(self.config.accelerator_count))
        if len(devices) < n:
            raise ValueError(
                f"accelerator_count={n} but JAX sees {len(devices)} {acc} device(s): "
                f"{devices}; lower accelerator_count"
            )
        return devices[:n]

    def _choose_attention(self, requested: str) -> str:
        """``cpu`` (our kernel) where it serves this engine, else ``xla``; ``auto`` says why
        it falls back on a CPU, ``cpu`` refuses to."""
        if requested not in ATTENTION:
            raise ValueError(f"attention={requested!r}; use one of {', '.join(ATTENTION)}")
        if requested == "xla":
            return "xla"
        cfg = self.cfg
        if self._device.platform != "cpu":
            reason = f"the device is a {self._device.platform}, not a CPU"
        elif self.mesh is not None:
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
        if self._device.platform == "cpu":
            log.warning("jax engine: XLA attention instead of the CPU kernel: %s", reason)
        return "xla"

    def _alloc_cache(self) -> None:
        cfg = self.cfg
        dtype = _DTYPES[self.config.dtype]
        kvh, hd, rows = cfg.num_kv_heads, cfg.head_dim, max(1, self.store_rows)
        shapes = {
            "k": (self.batch, kvh, hd, self.max_seq_len),
            "v": (self.batch, kvh, self.max_seq_len, hd),
        }
        store_shapes = {
            "k": (rows, kvh, hd, self.prefix_max),
            "v": (rows, kvh, self.prefix_max, hd),
        }

        def zeros(shape: tuple[int, ...], batch_axis: bool) -> list[jax.Array]:
            if self.mesh is None:
                make = lambda: jax.device_put(np.zeros(shape, dtype), self._device)  # noqa: E731
            else:
                sh = sharding.cache_sharding(shape, self.mesh, batch_axis)
                fn = jax.jit(lambda: jax.numpy.zeros(shape, dtype), out_shardings=sh)
                make = fn
            return [make() for _ in range(cfg.num_layers)]

        self.cache = {k: zeros(shapes[k], True) for k in ("k", "v")}
        self.store = {k: zeros(store_shapes[k], False) for k in ("k", "v")}
        self._store_index = collections.OrderedDict()

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

    def prompt_tokens(self, request: Request) -> list[int]:
        if request.messages is not None:
            if not request.messages:
                raise RequestError(ErrorCode.EMPTY_MESSAGES, "messages is empty")
            return self.tokenizer.encode_chat(request.messages)
        return self.tokenizer.encode_prompt(request.prompt or "")

    def compilations(self) -> int:
        """Programs compiled by this engine so far (bounded by the shape buckets)."""
        return int(
            self._prefill._cache_size()
            + self._prefill_packed._cache_size()
            + self._decode._cache_size()
        )

    def stats(self) -> Counters:
        self._stats.compilations = self.compilations()
        return dataclasses.replace(self._stats)

    def warmup(self) -> None:
        t0 = time.perf_counter()
        if self.packed:
            self._run_prefill_packed([], count=False)
        else:
            for t in self.buckets:
                self._run_prefill(t, [], [], count=False)
        self._run_decode({}, count=False)
        jax.block_until_ready(self.cache)
        self._stats.warmup_seconds += time.perf_counter() - t0

    def clear_prefix_cache(self) -> None:
        """Forget stored prefixes (benchmarks measure cold runs with it)."""
        self._store_index.clear()

    def close(self) -> None:
        self.params = self.cache = self.store = None

    # -- device calls ------------------------------------------------------------------------

    def _sampling_arrays(self, seqs: Sequence[_Seq | None], n: int) -> dict[str, np.ndarray]:
        temp = np.zeros(n, np.float32)
        top_k = np.zeros(n, np.int32)
        top_p = np.ones(n, np.float32)
        keys = np.zeros((n, 2), np.uint32)
        counters = np.zeros(n, np.int32)
        for i, s in enumerate(seqs):
            if s is None:
                continue
            sp = s.request.sampling
            temp[i], top_k[i], top_p[i] = sp.temperature, sp.top_k, sp.top_p
            keys[i] = s.key
            counters[i] = len(s.out)
        return {
            "temperature": temp,
            "top_k": top_k,
            "top_p": top_p,
            "keys": keys,
            "counters": counters,
        }

    def _run_prefill(
        self,
        t: int,
        seqs: Sequence[_Seq],
        parts: Sequence[tuple[int, int, int, int]],
        count: bool = True,
    ) -> np.ndarray:
        """One prefill call on bucket ``t``; ``parts[i]`` = (start, end, load_row, save_row)
        of ``seqs[i]``'s tokens. Returns the sampled next token per row."""
        p_rows = self.rows[t]
        r = max(1, self.store_rows)
        tokens = np.zeros((p_rows, t), np.int32)
        slots = np.full(p_rows, self.batch, np.int32)
        starts = np.zeros(p_rows, np.int32)
        lens = np.zeros(p_rows, np.int32)
        load = np.full(p_rows, r, np.int32)
        save = np.full(p_rows, r, np.int32)
        for i, (s, (a, b, lr, sr)) in enumerate(zip(seqs, parts, strict=True)):
            tokens[i, : b - a] = s.ids[a:b]
            slots[i], starts[i], lens[i], load[i], save[i] = s.slot, a, b - a, lr, sr
        batch = {
            "tokens": tokens,
            "slots": slots,
            "starts": starts,
            "lens": lens,
            "load_rows": load,
            "save_rows": save,
            **self._sampling_arrays([*seqs, *[None] * (p_rows - len(seqs))], p_rows),
        }
        t0 = time.perf_counter()
        self.cache, self.store, nxt = self._prefill(self.params, self.cache, self.store, batch)
        nxt = np.asarray(nxt)  # waits for the device
        if count:
            self._stats.prefill_seconds += time.perf_counter() - t0
            self._stats.computed_token_slots += p_rows * t
            self._stats.useful_token_slots += int(lens.sum())
        return nxt

    def _run_prefill_packed(
        self, pieces: Sequence[tuple[_Seq, tuple[int, int, int, int]]], count: bool = True
    ) -> np.ndarray:
        """One packed prefill call: ``pieces[i]`` = (seq, (start, end, load_row, save_row)),
        at most ``self.pieces`` of them and ``prefill_tokens`` tokens in all. A piece loads its
        prefix row if it starts the part, saves its store row and samples a token if it ends
        it (``end`` is the part's end when the piece is its last). Returns the sampled token
        per piece (meaningful for pieces that end a sequence)."""
        m, q = self.prefill_tokens, self.pieces
        r, b = max(1, self.store_rows), self.batch
        tokens = np.zeros(m, np.int32)
        slots = np.full(m, b, np.int32)
        positions = np.zeros(m, np.int32)
        load_slots, save_slots = np.full(q, b, np.int32), np.full(q, b, np.int32)
        load_rows, save_rows = np.full(q, r, np.int32), np.full(q, r, np.int32)
        emit = np.zeros(q, np.int32)
        at = 0
        for i, (s, (a, e, lr, sr)) in enumerate(pieces):
            n = e - a
            tokens[at : at + n] = s.ids[a:e]
            slots[at : at + n] = s.slot
            positions[at : at + n] = np.arange(a, e)
            load_slots[i], load_rows[i] = s.slot, lr
            save_slots[i], save_rows[i] = s.slot, sr
            emit[i] = at + n - 1
            at += n
        batch = {
            "tokens": tokens,
            "slots": slots,
            "positions": positions,
            "load_slots": load_slots,
            "load_rows": load_rows,
            "save_slots": save_slots,
            "save_rows": save_rows,
            "emit": emit,
            **self._sampling_arrays([s for s, _ in pieces] + [None] * (q - len(pieces)), q),
        }
        t0 = time.perf_counter()
        self.cache, self.store, nxt = self._prefill_packed(
            self.params, self.cache, self.store, batch
        )
        nxt = np.asarray(nxt)  # waits for the device
        if count:
            self._stats.prefill_seconds += time.perf_counter() - t0
            self._stats.computed_token_slots += m
            self._stats.useful_token_slots += at
        return nxt

    def _prefill_in_pieces(self, parts: list[tuple[_Seq, tuple[int, int, int, int]]]):
        """Packed prefill of (seq, (start, end, load, save)) parts, each split where a call is
        full (only its first piece loads the prefix, only its last saves and samples); returns
        (seq, next token) for every part."""
        none = max(1, self.store_rows)
        out: list[tuple[_Seq, Any]] = []
        call: list[tuple[_Seq, tuple[int, int, int, int]]] = []
        ends: list[bool] = []  # does call[i] end its part?
        room = self.prefill_tokens

        def run() -> None:
            toks = self._run_prefill_packed(call)
            out.extend((c[0], toks[i]) for i, c in enumerate(call) if ends[i])
            call.clear()
            ends.clear()

        for s, (a, e, load, save) in parts:
            while a < e:
                if room == 0 or len(call) == self.pieces:
                    run()
                    room = self.prefill_tokens
                n = min(e - a, room)
                ends.append(a + n == e)
                call.append((s, (a, a + n, load, save if ends[-1] else none)))
                a, room, load = a + n, room - n, none
        if call:
            run()
        return out

    def _run_decode(self, active: dict[int, _Seq], count: bool = True) -> np.ndarray:
        b = self.batch
        tokens = np.zeros(b, np.int32)
        positions = np.full(b, self.max_seq_len, np.int32)  # idle: writes dropped
        slots: list[_Seq | None] = [None] * b
        for slot, s in active.items():
            tokens[slot] = s.out[-1]
            positions[slot] = len(s.ids) + len(s.out) - 1
            slots[slot] = s
        state = {"tokens": tokens, "positions": positions, **self._sampling_arrays(slots, b)}
        self.cache, toks = self._decode(self.params, self.cache, state)
        if count:
            self._stats.computed_token_slots += b * self.steps
        return np.asarray(toks)

    # -- scheduling --------------------------------------------------------------------------

    def _prepare(self, index: int, request: Request) -> _Seq:
        sp = request.sampling
        if sp.presence_penalty or sp.frequency_penalty:
            raise RequestError(
                ErrorCode.ENGINE_REJECTED,
                "presence/frequency penalties are not supported by the jax engine; set them to 0",
            )
        if sp.logprobs is not None:
            raise RequestError(
                ErrorCode.ENGINE_REJECTED, "logprobs are not supported by the jax engine"
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
        prefix = 0
        if self.store_rows and request.messages:
            prefix = self.tokenizer.chat_prefix(request.messages, ids)
            if not self.prefix_min <= prefix <= self.prefix_max:
                prefix = 0
        return _Seq(
            index=index,
            request=request,
            ids=ids,
            prefix_len=prefix,
            limit=min(sp.max_tokens, self.max_seq_len - len(ids)),
            key=_seed_key(sp.seed),
            stop_ids=frozenset(sp.stop_token_ids)
            | (frozenset() if sp.ignore_eos else self.eos_ids),
        )

    def _admit(self, pending: collections.deque[_Seq], free: list[int]) -> list[_Seq]:
        """Prefill as many waiting requests as there are free slots; returns them."""
        chosen: list[_Seq] = []
        pinned: dict[tuple[int, ...], int] = {}  # prefixes this round uses -> store row
        creators: list[_Seq] = []
        while pending and len(chosen) < len(free):
            s = pending[0]
            if s.prefix_len:
                key = tuple(s.ids[: s.prefix_len])
                if key not in pinned:
                    row = self._store_index.get(key)
                    if row is None:
                        row = self._claim_row(set(pinned.values()))
                        if row is None:
                            break  # store full of this round's prefixes: next round
                        creators.append(s)
                        self._store_index[key] = row
                    pinned[key] = row
                self._store_index.move_to_end(key)
                s.cached = 0 if any(c is s for c in creators) else s.prefix_len
            pending.popleft()
            s.slot = free[len(chosen)]
            chosen.append(s)
        # phase A: each new prefix, computed once into its creator's slot and saved to the store
        self._prefill_groups(
            [
                (s, (0, s.prefix_len, self.store_rows, pinned[tuple(s.ids[: s.prefix_len])]))
                for s in creators
            ]
        )
        # phase B: every request's own tokens after its (loaded) prefix
        parts = []
        for s in chosen:
            if s.prefix_len:
                row = pinned[tuple(s.ids[: s.prefix_len])]
                parts.append((s, (s.prefix_len, len(s.ids), row, self.store_rows)))
            else:
                parts.append((s, (0, len(s.ids), self.store_rows, self.store_rows)))
        for s, tok in self._prefill_groups(parts):
            s.out.append(int(tok))
        return chosen

    def _claim_row(self, pinned_rows: set[int]) -> int | None:
        used = set(self._store_index.values())
        for row in range(self.store_rows):
            if row not in used:
                return row
        for key, row in self._store_index.items():  # least recently used first
            if row not in pinned_rows:
                del self._store_index[key]
                return row
        return None

    def _prefill_groups(self, parts: list[tuple[_Seq, tuple[int, int, int, int]]]):
        """Run prefill calls for (seq, (start, end, load, save)): packed, or by bucket."""
        if self.packed:
            return self._prefill_in_pieces(parts)
        by_bucket: dict[int, list] = collections.defaultdict(list)
        for s, part in parts:
            by_bucket[_bucket(part[1] - part[0], self.buckets)].append((s, part))
        out = []
        for t, items in sorted(by_bucket.items()):
            p_rows = self.rows[t]
            for i in range(0, len(items), p_rows):
                chunk = items[i : i + p_rows]
                toks = self._run_prefill(t, [s for s, _ in chunk], [p for _, p in chunk])
                out.extend((s, toks[j]) for j, (s, _) in enumerate(chunk))
        return out

    def _check_finish(self, s: _Seq) -> tuple[FinishReason, str] | None:
        """After appending a token: is the request done? (reason, final text)."""
        sp = s.request.sampling
        last = s.out[-1]
        if last in s.stop_ids:
            return FinishReason.STOP, self.tokenizer.decode(s.out[:-1])
        if sp.stop:
            text = self.tokenizer.decode(s.out)
            cuts = [i for i in (text.find(x) for x in sp.stop) if i >= 0]
            if cuts:
                return FinishReason.STOP, text[: min(cuts)]
        if len(s.out) >= s.limit:
            return FinishReason.LENGTH, self.tokenizer.decode(s.out)
        return None

    def _result(self, s: _Seq, reason: FinishReason, text: str) -> Result:
        return Result(
            record_id=s.request.record_id,
            text=text,
            finish_reason=reason,
            usage=Usage(
                prompt_tokens=len(s.ids), completion_tokens=len(s.out), cached_tokens=s.cached
            ),
            token_ids=tuple(s.out),
        )

    def generate(
        self, requests: Sequence[Request], on_result: OnResult | None = None
    ) -> list[Result]:
        t0 = time.perf_counter()
        results: list[Result | None] = [None] * len(requests)

        def finish(i: int, res: Result) -> None:
            results[i] = res
            st = self._stats
            st.records += 1
            st.results += int(res.ok)
            st.errors += int(not res.ok)
            st.prompt_tokens += res.usage.prompt_tokens
            st.completion_tokens += res.usage.completion_tokens
            st.cached_tokens += res.usage.cached_tokens
            if on_result is not None:
                on_result(res)

        pending: collections.deque[_Seq] = collections.deque()
        for i, r in enumerate(requests):
            try:
                pending.append(self._prepare(i, r))
            except RequestError as e:
                finish(i, Result.failed(r.record_id, e.code, e.message))
        active: dict[int, _Seq] = {}
        try:
            self._serve(pending, active, finish)
        except BaseException:
            # A device or runtime failure is not the records' fault: leave the engine usable
            # (donated buffers may be gone) and let it fail the caller's shard, which a rerun
            # (or Beam's bundle retry) serves again, instead of committing error records.
            self._alloc_cache()
            raise
        finally:
            self._stats.busy_seconds += time.perf_counter() - t0
        return [r for r in results if r is not None]

    def _serve(self, pending, active, finish) -> None:
        while pending or active:
            free = [slot for slot in range(self.batch) if slot not in active]
            if pending and free and (not active or len(free) >= min(self.refill_min, len(pending))):
                for s in self._admit(pending, free):
                    done = self._check_finish(s)
                    if done:
                        finish(s.index, self._result(s, *done))
                    else:
                        active[s.slot] = s
                continue
            if not active:
                continue
            toks = self._run_decode(active)
            for slot, s in list(active.items()):
                for k in range(self.steps):
                    s.out.append(int(toks[k, slot]))
                    self._stats.useful_token_slots += 1
                    done = self._check_finish(s)
                    if done:
                        finish(s.index, self._result(s, *done))
                        del active[slot]
                        break
