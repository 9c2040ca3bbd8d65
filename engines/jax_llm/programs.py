"""The engine's device programs: weights and KV caches on the devices, and the jitted programs.

``DevicePrograms`` owns everything on the devices -- the weights, the decode cache (one row per
slot) and the prefix store -- and the jitted programs of ``model`` (bucketed prefill, packed
prefill, decode, and the guided step in two: the model's step, then the sampling within per-slot
token bitmasks with log-probabilities, the masks built on the host in between), each with one
static shape per bucket. It turns host-side rows into the typed batches those programs take and
returns the sampled tokens as numpy arrays, with the token slots each call computed. It knows
nothing of requests, slots' owners or stop conditions: that is the scheduler's job.
``device_seconds`` adds up the time from each call's dispatch to its result (what the device
was busy with, as the host sees it); ``mask_seconds`` the host's time building token masks.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from hyperbatch.engines.jax_llm import model, sharding
from hyperbatch.engines.jax_llm.config import ModelConfig
from hyperbatch.engines.jax_llm.model import (
    DecodeState,
    Guide,
    GuidedStep,
    KVCache,
    PackedPrefillBatch,
    PrefillBatch,
)
from hyperbatch.engines.jax_llm.sampling import SamplingArrays


class RowSampling(NamedTuple):
    """One row's sampling inputs: its request's parameters, key data and counter."""

    temperature: float
    top_k: int
    top_p: float
    key: np.ndarray  # [2] uint32
    counter: int  # tokens its request has sampled so far


class PrefillRow(NamedTuple):
    """Tokens ``ids`` of a sequence at positions ``start...``, written into cache row ``slot``."""

    ids: Sequence[int]
    slot: int
    start: int
    load_row: int  # prefix-store row copied into the slot first (store_rows = none)
    save_row: int  # store row that receives the slot's first positions after (store_rows = none)
    sampling: RowSampling


@dataclasses.dataclass(frozen=True)
class Shapes:
    """The static shapes: every program's size is fixed by these."""

    batch: int  # B: decode slots
    max_seq_len: int  # S: cache positions per slot (whole attention blocks)
    block: int  # attention block
    steps: int  # decode steps per call
    store_rows: int  # R: prefix-store rows (0: no reuse; one dummy row is still allocated)
    prefix_max: int  # positions per prefix-store row
    prefill_tokens: int  # tokens per packed prefill call (M)
    pieces: int  # pieces per packed prefill call (Q)
    rows_per_bucket: dict[int, int]  # bucketed prefill: T -> P rows
    tail_batch: int = 0  # decode calls of at most this many busy slots compute only them (0: off)


def _sampling(rows: Sequence[RowSampling | None], n: int) -> SamplingArrays:
    temp = np.zeros(n, np.float32)
    top_k = np.zeros(n, np.int32)
    top_p = np.ones(n, np.float32)
    keys = np.zeros((n, 2), np.uint32)
    counters = np.zeros(n, np.int32)
    for i, r in enumerate(rows):
        if r is not None:
            temp[i], top_k[i], top_p[i], keys[i], counters[i] = r
    return SamplingArrays(temp, top_k, top_p, keys, counters)


class DevicePrograms:
    """Weights, caches and programs on one device or a mesh; see the module docstring."""

    def __init__(
        self,
        cfg: ModelConfig,
        host_params: model.Params,
        devices: Sequence[Any],
        shapes: Shapes,
        dtype: Any,
        attention: str,
        mesh: Any = None,
    ):
        self.cfg, self.shapes, self.dtype, self.attention = cfg, shapes, dtype, attention
        self.device_seconds = 0.0
        self.mesh = mesh
        self.device = devices[0]
        if mesh is not None:
            self.params = sharding.put(host_params, sharding.param_shardings(host_params, mesh))
        else:
            self.params = jax.device_put(host_params, self.device)
        self.reset_caches()
        block, steps = shapes.block, shapes.steps
        self._prefill = jax.jit(
            functools.partial(model.prefill, cfg=cfg, block=block, attention=attention),
            donate_argnames=("cache", "store"),
        )
        self._prefill_packed = jax.jit(
            functools.partial(model.prefill_packed, cfg=cfg, block=block, attention=attention),
            donate_argnames=("cache", "store"),
        )
        self._decode = jax.jit(
            functools.partial(model.decode, cfg=cfg, block=block, steps=steps, attention=attention),
            donate_argnames=("cache",),
        )
        # the same steps for the busy slots only, each with its cache row: a job's tail (few
        # slots busy, none waiting) costs what its slots compute, not the whole batch
        self._decode_tail = jax.jit(
            functools.partial(model.decode, cfg=cfg, block=block, steps=steps, attention=attention),
            donate_argnames=("cache",),
        )
        # a guided step is two programs: the model's step, then the masked sampling, so the
        # host builds the step's token masks while the device runs the model
        self._decode_logits = jax.jit(
            functools.partial(model.decode_logits, cfg=cfg, block=block, attention=attention),
            donate_argnames=("cache",),
        )
        self._guided_sample = jax.jit(model.guided_sample)
        self.mask_seconds = 0.0  # host time spent building guided steps' masks
        self.mask_words = (cfg.vocab_size + 31) // 32  # int32 words per bitmask row

    # -- buffers ------------------------------------------------------------------------------

    def reset_caches(self) -> None:
        """Fresh zero caches (also after a failed call: donated buffers may be gone)."""
        cfg, sh = self.cfg, self.shapes
        kvh, hd, rows = cfg.num_kv_heads, cfg.head_dim, max(1, sh.store_rows)

        def zeros(shape: tuple[int, ...], batch_axis: bool) -> list[jax.Array]:
            if self.mesh is None:
                return [
                    jax.device_put(np.zeros(shape, self.dtype), self.device)
                    for _ in range(cfg.num_layers)
                ]
            out_sharding = sharding.cache_sharding(shape, self.mesh, batch_axis)
            make = jax.jit(lambda: jax.numpy.zeros(shape, self.dtype), out_shardings=out_sharding)
            return [make() for _ in range(cfg.num_layers)]

        cache_k, cache_v = model.cache_shapes(sh.batch, kvh, hd, sh.max_seq_len, self.attention)
        store_k, store_v = model.cache_shapes(rows, kvh, hd, sh.prefix_max, self.attention)
        self.cache = KVCache(zeros(cache_k, True), zeros(cache_v, True))
        self.store = KVCache(zeros(store_k, False), zeros(store_v, False))

    def compilations(self) -> int:
        """Programs compiled so far (bounded by the shape buckets)."""
        return int(
            self._prefill._cache_size()
            + self._prefill_packed._cache_size()
            + self._decode._cache_size()
            + self._decode_tail._cache_size()
            + self._decode_logits._cache_size()
            + self._guided_sample._cache_size()
        )

    def close(self) -> None:
        """Free the device memory (the programs cannot run after this)."""
        del self.params, self.cache, self.store

    # -- calls ------------------------------------------------------------------------------

    def _wait(self, t0: float, result: Any) -> np.ndarray:
        out = np.asarray(result)  # waits for the device
        self.device_seconds += time.perf_counter() - t0
        return out

    def prefill(self, t: int, rows: Sequence[PrefillRow]) -> tuple[np.ndarray, int]:
        """One bucketed prefill call on bucket ``t`` (at most ``rows_per_bucket[t]`` rows);
        returns the sampled next token per row and the token slots computed."""
        sh = self.shapes
        p_rows, none = sh.rows_per_bucket[t], max(1, sh.store_rows)
        tokens = np.zeros((p_rows, t), np.int32)
        slots = np.full(p_rows, sh.batch, np.int32)
        starts = np.zeros(p_rows, np.int32)
        lens = np.zeros(p_rows, np.int32)
        load = np.full(p_rows, none, np.int32)
        save = np.full(p_rows, none, np.int32)
        for i, r in enumerate(rows):
            tokens[i, : len(r.ids)] = r.ids
            slots[i], starts[i], lens[i], load[i], save[i] = (
                r.slot, r.start, len(r.ids), r.load_row, r.save_row
            )  # fmt: skip
        batch = PrefillBatch(
            tokens, slots, starts, lens, load, save, _sampling([r.sampling for r in rows], p_rows)
        )
        t0 = time.perf_counter()
        self.cache, self.store, nxt = self._prefill(self.params, self.cache, self.store, batch)
        return self._wait(t0, nxt), p_rows * t

    def prefill_packed(self, pieces: Sequence[PrefillRow]) -> tuple[np.ndarray, int]:
        """One packed prefill call: at most ``pieces`` rows and ``prefill_tokens`` tokens in all.
        A row loads its prefix row before the layers and saves its store row after them; the
        token after its last one is sampled (meaningful for rows that end a sequence)."""
        sh = self.shapes
        m, q, b, none = sh.prefill_tokens, sh.pieces, sh.batch, max(1, sh.store_rows)
        tokens = np.zeros(m, np.int32)
        slots = np.full(m, b, np.int32)
        positions = np.zeros(m, np.int32)
        load_slots, save_slots = np.full(q, b, np.int32), np.full(q, b, np.int32)
        load_rows, save_rows = np.full(q, none, np.int32), np.full(q, none, np.int32)
        emit = np.zeros(q, np.int32)
        load_lens, save_lens = np.zeros(q, np.int32), np.zeros(q, np.int32)
        at = 0
        for i, r in enumerate(pieces):
            n = len(r.ids)
            load_lens[i], save_lens[i] = r.start, r.start + n
            tokens[at : at + n] = r.ids
            slots[at : at + n] = r.slot
            positions[at : at + n] = np.arange(r.start, r.start + n)
            load_slots[i], load_rows[i] = r.slot, r.load_row
            save_slots[i], save_rows[i] = r.slot, r.save_row
            emit[i] = at + n - 1
            at += n
        batch = PackedPrefillBatch(
            tokens, slots, positions, load_slots, load_rows, save_slots, save_rows, emit,
            _sampling([r.sampling for r in pieces], q), load_lens, save_lens,
        )  # fmt: skip
        t0 = time.perf_counter()
        self.cache, self.store, nxt = self._prefill_packed(
            self.params, self.cache, self.store, batch
        )
        return self._wait(t0, nxt), m

    def _state(self, slots: dict[int, tuple[int, int, RowSampling]], b: int) -> DecodeState:
        tokens = np.zeros(b, np.int32)
        positions = np.full(b, self.shapes.max_seq_len, np.int32)  # idle: writes dropped
        rows: list[RowSampling | None] = [None] * b
        for slot, (token, position, sampling) in slots.items():
            tokens[slot], positions[slot], rows[slot] = token, position, sampling
        return DecodeState(tokens, positions, _sampling(rows, b))

    def decode(
        self, slots: dict[int, tuple[int, int, RowSampling]], tail: bool | None = None
    ) -> tuple[np.ndarray, int]:
        """``steps`` decode steps for every slot; ``slots`` maps an active slot to (its last
        token, that token's position, its sampling). Returns tokens [steps, B] and the token
        slots computed. With at most ``tail_batch`` slots (``tail``: whether to, default: if
        there is a tail program), only those are computed; idle slots' tokens are zeros."""
        b, steps, small = self.shapes.batch, self.shapes.steps, self.shapes.tail_batch
        if tail is None:
            tail = 0 < len(slots) <= small
        if not tail:
            state = self._state(slots, b)
            t0 = time.perf_counter()
            self.cache, toks = self._decode(self.params, self.cache, state)
            return self._wait(t0, toks), b * steps
        busy = sorted(slots)
        state = self._state({i: slots[slot] for i, slot in enumerate(busy)}, small)
        rows = np.zeros(small, np.int32)  # an idle entry's position is S: it touches no row
        rows[: len(busy)] = busy
        t0 = time.perf_counter()
        self.cache, toks = self._decode_tail(self.params, self.cache, state, rows=rows)
        out = np.zeros((steps, b), np.int32)
        out[:, busy] = self._wait(t0, toks)[:, : len(busy)]
        return out, small * steps

    def decode_guided(
        self,
        slots: dict[int, tuple[int, int, RowSampling]],
        bitmask: np.ndarray,
        logprobs: np.ndarray,
        fill: Callable[[], None] | None = None,
    ) -> tuple[GuidedStep, int]:
        """One guided decode step for every slot (``model.decode_logits``, then
        ``model.guided_sample``): ``bitmask`` [B, mask_words] int32 holds each slot's allowed
        tokens (-1 words: all), ``logprobs`` [B] bool which slots want log-probabilities.
        ``fill``, if given, writes ``bitmask`` on the host after the model's step is dispatched
        and before the sampling is, so building the masks overlaps the device's work. Returns
        the step's outputs as numpy arrays and the token slots computed."""
        state = self._state(slots, self.shapes.batch)
        t0 = time.perf_counter()
        self.cache, logits = self._decode_logits(self.params, self.cache, state)
        if fill is not None:
            t_mask = time.perf_counter()
            fill()  # the device runs the model meanwhile (asynchronous dispatch)
            self.mask_seconds += time.perf_counter() - t_mask
        out = self._guided_sample(logits, state.sampling, Guide(bitmask, logprobs))
        host = GuidedStep(*(np.asarray(x) for x in out))  # waits for the device
        self.device_seconds += time.perf_counter() - t0
        return host, self.shapes.batch

    def warmup(self, buckets: Sequence[int], packed: bool) -> None:
        """Compile every program this engine will run (empty calls: nothing is counted)."""
        if packed:
            self.prefill_packed([])
        else:
            for t in buckets:
                self.prefill(t, [])
        self.decode({}, tail=False)
        if self.shapes.tail_batch:
            self.decode({}, tail=True)
        b = self.shapes.batch
        self.decode_guided({}, np.full((b, self.mask_words), -1, np.int32), np.zeros(b, bool))
        jax.block_until_ready(self.cache)
        self.device_seconds = 0.0
