"""The Llama-family decoder in JAX: parameters layout, prefill into a slot KV cache, decode steps.

Parameter layout (one pytree; ``layers`` is a list with one dict per layer):

  embed [V, D]            lm_head [D, V] (a copy of embed.T for tied models)    final_norm [D]
  layers[i]: attn_norm [D], wqkv [D, KVH, G+2, hd] (per KV head: its G query heads, K, V),
  wo [H*hd, D], mlp_norm [D], w_gate_up [D, 2, F], w_down [F, D]; optional biases bqkv
  [KVH, G+2, hd], bo [D], b_gate_up [2, F], b_down [D]

Fusing Q/K/V (and gate/up) makes one wide matmul instead of three (two), and grouping the fused
columns by KV head lets tensor parallelism shard them on the KV-head axis without collectives.

KV cache: ``k``/``v``, each a list of L per-layer arrays -- k [B, KVH, hd, S] (transposed, so
decode's scores are a plain matmul), v [B, KVH, S, hd] -- one row per decode slot (separate buffers, so a layer reads its cache without slicing a bigger array). With the CPU
attention kernel k is [B, KVH, ceil(S/16), hd, 16] instead (keys in tiles of 16 positions, see
``cpu_attention.key_cache_shape``; only the kernel reads and writes it). A prefix store
of the same layout with R rows and fewer positions holds shared prefixes (e.g. a system prompt).
Attention walks the cache in blocks of ``block`` keys with an online softmax and a *dynamic*
number of blocks (the longest live sequence), so there is one program whatever the lengths, and a
row's result does not depend on how long its neighbours are (fully masked blocks add exact zeros).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hyperbatch.engines.jax_llm import cpu_attention
from hyperbatch.engines.jax_llm.config import ModelConfig
from hyperbatch.engines.jax_llm.sampling import (
    TOP_LOGPROBS,
    SamplingArrays,
    apply_bitmask,
    sample_rows,
    token_logprobs,
)

Params = dict[str, Any]  # the weights pytree described in the module docstring
MASKED = -1e30  # finite, so a fully masked block keeps the online softmax free of NaNs


class KVCache(NamedTuple):
    """Per-layer key/value buffers (lists of L arrays): k [rows, KVH, hd, S] (transposed; in
    tiles with the CPU kernel: ``cache_shapes``), v [rows, KVH, S, hd]. The decode cache has one
    row per slot; the prefix store R rows."""

    k: list[jax.Array]
    v: list[jax.Array]


def cache_shapes(
    rows: int, kvh: int, hd: int, s: int, attention: str
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The (k, v) buffer shapes of one layer's cache of ``rows`` rows and ``s`` positions."""
    if attention == "cpu":
        k_shape = cpu_attention.key_cache_shape(rows, kvh, hd, s)
    else:
        k_shape = (rows, kvh, hd, s)
    return k_shape, (rows, kvh, s, hd)


class PrefillBatch(NamedTuple):
    """P sequences of up to T tokens each (``prefill``)."""

    tokens: jax.Array  # [P, T] int32, right-padded
    slots: jax.Array  # [P] cache row of each sequence (B = a padding row: writes dropped)
    starts: jax.Array  # [P] position of the first token (> 0 after a reused prefix)
    lens: jax.Array  # [P] real tokens in the row
    load_rows: jax.Array  # [P] prefix-store row copied into the slot first (R = none)
    save_rows: jax.Array  # [P] store row that receives the slot's first positions (R = none)
    sampling: SamplingArrays  # [P]


class PackedPrefillBatch(NamedTuple):
    """M tokens of any mix of sequences, in Q pieces (``prefill_packed``)."""

    tokens: jax.Array  # [M] int32
    slots: jax.Array  # [M] each token's cache row (B = padding)
    positions: jax.Array  # [M] each token's position
    load_slots: jax.Array  # [Q] per piece: the slot a prefix-store row is copied into ...
    load_rows: jax.Array  # [Q] ... from this row (R = none), before the layers run
    save_slots: jax.Array  # [Q] per piece: the slot whose first positions are saved ...
    save_rows: jax.Array  # [Q] ... into this store row (R = none), after them
    emit: jax.Array  # [Q] index of the token whose next token is sampled
    sampling: SamplingArrays  # [Q]
    load_lens: jax.Array  # [Q] positions a piece loads (its prefix: where its tokens start)
    save_lens: jax.Array  # [Q] positions a piece saves (its prefix: where its tokens end)


class DecodeState(NamedTuple):
    """Every decode slot's last token and where it goes (all [B])."""

    tokens: jax.Array  # int32
    positions: jax.Array  # int32; >= S for an idle slot (its writes are dropped)
    sampling: SamplingArrays  # counters: tokens sampled so far by each slot's request


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight * y.astype(x.dtype)


def rope_tables(cfg: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos/sin [..., hd] for integer positions (float32, as transformers computes them)."""
    inv = jnp.asarray(cfg.inv_freq())
    freqs = positions.astype(jnp.float32)[..., None] * inv
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos.astype(x.dtype) + rotated * sin.astype(x.dtype)


def _project_qkv(cfg: ModelConfig, lp: Params, x: jax.Array) -> jax.Array:
    """x [N, T, D] -> qkv [N, T, KVH, G+2, hd]: per KV head its G queries, k, v (before RoPE)."""
    h = rms_norm(x, lp["attn_norm"], cfg.rms_norm_eps)
    qkv = jnp.einsum("ntd,dkgh->ntkgh", h, lp["wqkv"])
    if "bqkv" in lp:
        qkv = qkv + lp["bqkv"]
    return qkv


def _qkv(cfg: ModelConfig, lp: Params, x: jax.Array, positions: jax.Array):
    """x [N, T, D] -> q [N, T, KVH, G, hd] (RoPE'd, unscaled), k/v [N, T, KVH, hd]."""
    qkv = _project_qkv(cfg, lp, x)
    g = cfg.group_size
    q, k, v = qkv[..., :g, :], qkv[..., g, :], qkv[..., g + 1, :]
    cos, sin = rope_tables(cfg, positions)
    q = apply_rope(q, cos[:, :, None, None, :], sin[:, :, None, None, :])
    k = apply_rope(k, cos[:, :, None, :], sin[:, :, None, :])
    return q, k, v


def _mlp_and_out(cfg: ModelConfig, lp: Params, x: jax.Array, attn: jax.Array) -> jax.Array:
    """Output projection + residual, then the SwiGLU MLP + residual."""
    o = jnp.einsum("nte,ed->ntd", attn.astype(x.dtype), lp["wo"])
    if "bo" in lp:
        o = o + lp["bo"]
    x = x + o
    h = rms_norm(x, lp["mlp_norm"], cfg.rms_norm_eps)
    gu = jnp.einsum("ntd,dcf->ntcf", h, lp["w_gate_up"])
    if "b_gate_up" in lp:
        gu = gu + lp["b_gate_up"]
    a = jax.nn.silu(gu[:, :, 0]) * gu[:, :, 1]
    d = jnp.einsum("ntf,fd->ntd", a, lp["w_down"])
    if "b_down" in lp:
        d = d + lp["b_down"]
    return x + d


def _attend(cfg: ModelConfig, q, qpos, get_block, n_blocks, block: int):
    """Online-softmax attention of q [N, T, KVH, G, hd] over cache blocks 0..n_blocks-1.

    ``get_block(j)`` returns block j's keys [N, KVH, hd, block] (transposed: the scores are then
    a plain matmul) and values [N, KVH, block, hd]; key j*block+i is visible to a query at position p when it is <= p (and within the sliding window).
    """
    n, t, kvh, g, hd = q.shape
    scale = 1.0 / np.sqrt(hd)
    qf = q.astype(jnp.float32) * scale
    m0 = jnp.full((n, kvh, g, t), MASKED, jnp.float32)
    d0 = jnp.zeros((n, kvh, g, t), jnp.float32)
    acc0 = jnp.zeros((n, kvh, g, t, hd), jnp.float32)

    def body(j, carry):
        m, denom, acc = carry
        kb, vb = get_block(j)
        s = jnp.einsum("ntkgh,nkhw->nkgtw", qf, kb.astype(jnp.float32))
        kpos = j * block + jnp.arange(block)
        visible = kpos[None, None, :] <= qpos[:, :, None]
        if cfg.sliding_window:
            visible &= kpos[None, None, :] > qpos[:, :, None] - cfg.sliding_window
        s = jnp.where(visible[:, None, None], s, MASKED)
        m_new = jnp.maximum(m, s.max(-1))
        corr = jnp.exp(m - m_new)
        p = jnp.exp(s - m_new[..., None])
        denom = denom * corr + p.sum(-1)
        pv = jnp.einsum(
            "nkgtw,nkwh->nkgth", p.astype(vb.dtype), vb, preferred_element_type=jnp.float32
        )
        return m_new, denom, acc * corr[..., None] + pv

    _, denom, acc = lax.fori_loop(0, n_blocks, body, (m0, d0, acc0))
    out = acc / denom[..., None]
    return jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(n, t, kvh * g * hd)


def run_layers(params: Params, layer, carry):
    """Apply ``layer(carry, (layer_params, index)) -> (carry, None)`` for every layer, unrolled.

    (A ``lax.scan`` over stacked weights compiles faster, but on CPU each step copies its layer's
    weights out of the stack and the KV cache cannot be per-layer buffers; unrolled, nothing is
    copied.)"""
    for i, lp in enumerate(params["layers"]):
        carry, _ = layer(carry, (lp, i))
    return carry


def _logits(params: Params, cfg: ModelConfig, h: jax.Array) -> jax.Array:
    h = rms_norm(h, params["final_norm"], cfg.rms_norm_eps)
    return jnp.einsum("...d,dv->...v", h, params["lm_head"], preferred_element_type=jnp.float32)


# ----------------------------------------------------------------------------------------------
# Prefill: P sequences of T tokens each, written into their decode slots


def _kernel_layer(cfg: ModelConfig, lp: Params, x, kc, vc, rope, rows, pos):
    """One layer with the CPU kernel: x [N, T, D]; rope = (cos, sin) [N*T, hd]; rows/pos
    [N*T]: each token's cache row and position. Returns (x, kc, vc), the caches updated."""
    n, t = x.shape[:2]
    qkv = _project_qkv(cfg, lp, x)
    cos, sin = rope
    attn, kc, vc = cpu_attention.attention_layer(
        qkv.reshape(n * t, *qkv.shape[2:]), cos, sin, kc, vc, rows, pos, cfg.sliding_window
    )
    return _mlp_and_out(cfg, lp, x, attn.reshape(n, t, -1)), kc, vc


def _prefill_layers(params, cfg, ck, cv, tokens, slots, starts, lens, block, attention):
    """Run the layers over tokens [P, T] at positions starts+t, writing K/V into cache rows
    ``slots`` (an out-of-range slot drops the writes: padding rows). ``ck``/``cv``: per-layer
    lists of [B, KVH, S, hd]. Returns (hidden [P, T, D], ck, cv)."""
    t_len = tokens.shape[1]
    positions = starts[:, None] + jnp.arange(t_len, dtype=jnp.int32)[None, :]
    x = params["embed"][tokens]
    ck, cv = list(ck), list(cv)
    if attention == "cpu":  # the kernel takes a flat list of tokens, each with its row
        flat_rows, flat_pos = jnp.repeat(slots, t_len), positions.reshape(-1)
        rope = rope_tables(cfg, flat_pos)

        def layer(x, lp_i):
            lp, i = lp_i
            x, ck[i], cv[i] = _kernel_layer(cfg, lp, x, ck[i], cv[i], rope, flat_rows, flat_pos)
            return x, None

        return run_layers(params, layer, x), ck, cv

    b_rows, s_len = cv[0].shape[0], cv[0].shape[2]
    n_blocks = jnp.minimum(
        (jnp.max(jnp.where(lens > 0, starts + lens, 0)) + block - 1) // block, s_len // block
    )
    head_ix = jnp.arange(cfg.num_kv_heads)[None, :, None]
    rows = jnp.minimum(slots, b_rows - 1)[:, None, None]

    def layer(x, lp_i):
        lp, i = lp_i
        q, k, v = _qkv(cfg, lp, x, positions)
        ck[i] = ck[i].at[slots[:, None], :, :, positions].set(k.astype(ck[i].dtype), mode="drop")
        cv[i] = cv[i].at[slots[:, None], :, positions].set(v.astype(cv[i].dtype), mode="drop")
        kc, vc = ck[i], cv[i]

        def get_block(j):
            kpos = (j * block + jnp.arange(block))[None, None, :]
            kb = jnp.swapaxes(kc[rows, head_ix, :, kpos], -1, -2)
            return kb.astype(x.dtype), vc[rows, head_ix, kpos].astype(x.dtype)

        attn = _attend(cfg, q, positions, get_block, n_blocks, block)
        return _mlp_and_out(cfg, lp, x, attn), None

    x = run_layers(params, layer, x)
    return x, ck, cv


def _load_prefixes(cache, store, slots, rows, lens, attention: str):
    """Copy prefix-store rows ``rows`` into cache rows ``slots`` (first positions; a row >= R
    or a slot >= B copies nothing). Returns the cache's (k, v) lists. The CPU kernel copies
    the first ``lens`` positions of each (its tiled keys are the kernel's to read); XLA copies
    the store's whole length, skipped when nothing loads, picking the store rows by a one-hot
    matmul (exact: one product by 1.0 per element) -- XLA's CPU gather is many times slower
    than a matmul of this size."""
    if attention == "cpu":
        return _copy_positions(store, cache, rows, slots, lens)
    b_rows = cache.v[0].shape[0]
    r_rows, p_len = store.v[0].shape[0], store.v[0].shape[2]
    loads = rows < r_rows
    slots = jnp.where(loads, slots, b_rows)
    pick = (rows[:, None] == jnp.arange(r_rows)[None, :]).astype(jnp.float32)

    def rows_of(st):
        got = jnp.einsum(
            "qr,r...->q...",
            pick,
            st,
            precision=lax.Precision.HIGHEST,  # exact on TPU/GPU too (no bf16/tf32 passes)
            preferred_element_type=jnp.float32,
        )
        return got.astype(st.dtype)

    def load(ck, cv):
        ck = [
            c.at[slots, :, :, :p_len].set(rows_of(st), mode="drop")
            for c, st in zip(ck, store.k, strict=True)
        ]
        cv = [
            c.at[slots, :, :p_len].set(rows_of(st), mode="drop")
            for c, st in zip(cv, store.v, strict=True)
        ]
        return ck, cv

    return lax.cond(jnp.any(loads), load, lambda ck, cv: (ck, cv), cache.k, cache.v)


def _copy_positions(src: KVCache, dst: KVCache, src_rows, dst_rows, lens):
    """The CPU kernel's copy of each piece's first ``lens`` positions from rows ``src_rows`` of
    ``src`` into rows ``dst_rows`` of ``dst`` (a row out of range copies nothing), every layer.
    Returns dst's (k, v) lists."""
    pairs = [
        cpu_attention.copy_positions(sk, sv, dk, dv, src_rows, dst_rows, lens)
        for sk, sv, dk, dv in zip(src.k, src.v, dst.k, dst.v, strict=True)
    ]
    return [k for k, _ in pairs], [v for _, v in pairs]


def _save_prefixes(store, ck, cv, slots, rows, lens, attention: str):
    """Copy the first positions of cache rows ``slots`` into store rows ``rows`` (R = none):
    the first ``lens`` with the CPU kernel (None: the store's whole length), the store's whole
    length with XLA, skipped when nothing saves. Returns the store."""
    if attention == "cpu":
        if lens is None:
            lens = jnp.full(slots.shape, store.v[0].shape[2], jnp.int32)
        return KVCache(*_copy_positions(KVCache(ck, cv), store, slots, rows, lens))
    b_rows = cv[0].shape[0]
    r_rows, p_len = store.v[0].shape[0], store.v[0].shape[2]
    slots = jnp.minimum(slots, b_rows - 1)

    def save(sk, sv):
        sk = [
            st.at[rows].set(c[slots, :, :, :p_len], mode="drop")
            for st, c in zip(sk, ck, strict=True)
        ]
        sv = [
            st.at[rows].set(c[slots, :, :p_len], mode="drop") for st, c in zip(sv, cv, strict=True)
        ]
        return sk, sv

    sk, sv = lax.cond(jnp.any(rows < r_rows), save, lambda sk, sv: (sk, sv), store.k, store.v)
    return KVCache(sk, sv)


def prefill(
    params: Params,
    cache: KVCache,
    store: KVCache,
    batch: PrefillBatch,
    *,
    cfg: ModelConfig,
    block: int,
    attention: str = "xla",
) -> tuple[KVCache, KVCache, jax.Array]:
    """Prefill P sequences into their slots and sample each one's next token.

    A row first gets its prefix-store row (``load_rows``), then its tokens run through the layers
    at positions ``starts + t`` (K/V written into its slot), then its first positions may be
    saved to the store (``save_rows``). Returns (cache, store, next_tokens [P]). Not jitted
    here: each engine jits its own copy (static cfg/block, donated cache/store) so it can count
    its compilations.
    """
    ck, cv = _load_prefixes(cache, store, batch.slots, batch.load_rows, batch.starts, attention)
    x, ck, cv = _prefill_layers(
        params, cfg, ck, cv, batch.tokens, batch.slots, batch.starts, batch.lens, block, attention
    )
    store = _save_prefixes(store, ck, cv, batch.slots, batch.save_rows, None, attention)
    last = jnp.maximum(batch.lens - 1, 0)
    h = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
    return KVCache(ck, cv), store, sample_rows(_logits(params, cfg, h), batch.sampling)


def prefill_packed(
    params: Params,
    cache: KVCache,
    store: KVCache,
    batch: PackedPrefillBatch,
    *,
    cfg: ModelConfig,
    block: int,
    attention: str = "cpu",
) -> tuple[KVCache, KVCache, jax.Array]:
    """Prefill M tokens that belong to any mix of sequences: no padding but the call's tail.

    Each token carries its own slot and position, so a call holds many short prompts, or a piece
    of a long one (the rest follows in the next call: its earlier K/V are already in the cache).
    Meant for the CPU kernel, whose attention reads each token's own cache row; XLA's attention
    gathers whole rows per token here (correct, slow). Returns (cache, store, next_tokens [Q]).
    """
    ck, cv = _load_prefixes(
        cache, store, batch.load_slots, batch.load_rows, batch.load_lens, attention
    )
    tokens, positions = batch.tokens[:, None], batch.positions
    ones = jnp.ones_like(positions)
    x, ck, cv = _prefill_layers(
        params, cfg, ck, cv, tokens, batch.slots, positions, ones, block, attention
    )
    store = _save_prefixes(
        store, ck, cv, batch.save_slots, batch.save_rows, batch.save_lens, attention
    )
    h = x[batch.emit, 0]
    return KVCache(ck, cv), store, sample_rows(_logits(params, cfg, h), batch.sampling)


@functools.partial(jax.jit, static_argnames=("cfg", "block", "attention"))
def forward_logits(params, tokens, *, cfg: ModelConfig, block: int = 16, attention: str = "xla"):
    """All-position logits [N, T, V] of tokens [N, T] from an empty cache (tests, scoring)."""
    h = _hidden(params, tokens, cfg=cfg, block=block, attention=attention)
    return jnp.einsum("...d,dv->...v", h, params["lm_head"], preferred_element_type=jnp.float32)


@functools.partial(jax.jit, static_argnames=("cfg", "block", "attention"))
def hidden_states(params, tokens, *, cfg: ModelConfig, block: int = 16, attention: str = "xla"):
    """Hidden states [N, T, D] after the final norm -- transformers' ``last_hidden_state`` -- of
    tokens [N, T] from an empty cache (decoder-based embedders pool these). Attention is causal,
    so right padding does not change the real positions."""
    return _hidden(params, tokens, cfg=cfg, block=block, attention=attention)


def _hidden(params, tokens, *, cfg: ModelConfig, block: int, attention: str):
    n, t = tokens.shape
    s_len = -(-t // block) * block
    k_shape, v_shape = cache_shapes(n, cfg.num_kv_heads, cfg.head_dim, s_len, attention)
    ck = [jnp.zeros(k_shape, params["embed"].dtype) for _ in range(cfg.num_layers)]
    cv = [jnp.zeros(v_shape, params["embed"].dtype) for _ in range(cfg.num_layers)]
    slots = jnp.arange(n, dtype=jnp.int32)
    zeros = jnp.zeros((n,), jnp.int32)
    lens = jnp.full((n,), t, jnp.int32)
    x, _, _ = _prefill_layers(params, cfg, ck, cv, tokens, slots, zeros, lens, block, attention)
    return rms_norm(x, params["final_norm"], cfg.rms_norm_eps)


# ----------------------------------------------------------------------------------------------
# Decode: all B slots, ``steps`` tokens per call, sampling on device

#: up to this many cache positions, decode attends to the whole cache row in one batched matmul
#: (no block loop, no slice copies); beyond it, it walks the live blocks only.
FULL_ATTENTION_MAX = 128


def _attend_full(cfg: ModelConfig, q, qpos, kc, vc):
    """Decode attention of q [B, 1, KVH, G, hd] over whole cache rows (k [B, KVH, hd, S],
    v [B, KVH, S, hd])."""
    n, _, kvh, g, hd = q.shape
    qf = q[:, 0].astype(jnp.float32) * (1.0 / np.sqrt(hd))
    s = jnp.einsum("nkgh,nkhw->nkgw", qf, kc.astype(jnp.float32))
    kpos = jnp.arange(kc.shape[3])[None, :]
    visible = kpos <= qpos
    if cfg.sliding_window:
        visible &= kpos > qpos - cfg.sliding_window
    s = jnp.where(visible[:, None, None, :], s, MASKED)
    p = jnp.exp(s - s.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True)
    out = jnp.einsum("nkgw,nkwh->nkgh", p.astype(vc.dtype), vc, preferred_element_type=jnp.float32)
    return out.reshape(n, 1, kvh * g * hd)


def _decode_step(params: Params, ck, cv, tok, pos, *, cfg: ModelConfig, block: int,
                 full_attention_max: int, attention: str, rows=None):  # fmt: skip
    """One decode step of every slot: token ``tok`` [B] at ``pos`` [B] (>= S: an idle slot,
    its writes dropped) writes its K/V and yields the next-token logits. Returns (ck, cv,
    logits [B, V]) with ``ck``/``cv`` the per-layer cache lists, updated. ``rows`` [N] (the
    CPU kernel only): the cache row of each of N <= B tokens, else token i is row i's."""
    ck, cv = list(ck), list(cv)
    b_rows, kvh, s_len, hd = cv[0].shape
    if rows is None:
        rows = jnp.arange(b_rows)
    elif attention != "cpu":
        raise ValueError("decoding chosen cache rows needs the CPU attention kernel")
    live = pos < s_len
    n_blocks = jnp.minimum(jnp.max(jnp.where(live, pos, 0)) // block + 1, s_len // block)
    x = params["embed"][tok][:, None, :]
    qpos = pos[:, None]
    rope = rope_tables(cfg, pos) if attention == "cpu" else None

    def layer(x, lp_i):
        lp, i = lp_i
        if attention == "cpu":
            x, ck[i], cv[i] = _kernel_layer(cfg, lp, x, ck[i], cv[i], rope, rows, pos)
            return x, None
        q, k, v = _qkv(cfg, lp, x, qpos)
        ck[i] = ck[i].at[rows, :, :, pos].set(k[:, 0].astype(ck[i].dtype), mode="drop")
        cv[i] = cv[i].at[rows, :, pos].set(v[:, 0].astype(cv[i].dtype), mode="drop")
        kc, vc = ck[i], cv[i]
        if s_len <= full_attention_max:
            attn = _attend_full(cfg, q, qpos, kc, vc)
        else:

            def get_block(j):
                kb = lax.dynamic_slice(kc, (0, 0, 0, j * block), (b_rows, kvh, hd, block))
                vb = lax.dynamic_slice(vc, (0, 0, j * block, 0), (b_rows, kvh, block, hd))
                return kb.astype(x.dtype), vb.astype(x.dtype)

            attn = _attend(cfg, q, qpos, get_block, n_blocks, block)
        return _mlp_and_out(cfg, lp, x, attn), None

    x = run_layers(params, layer, x)
    return ck, cv, _logits(params, cfg, x[:, 0])


def decode(
    params: Params,
    cache: KVCache,
    state: DecodeState,
    *,
    cfg: ModelConfig,
    block: int,
    steps: int,
    return_logits: bool = False,
    full_attention_max: int = FULL_ATTENTION_MAX,
    attention: str = "xla",
    rows: jax.Array | None = None,
):
    """``steps`` decode steps for every slot (``rows``: for N <= B slots in their cache rows,
    see ``_decode_step``).

    Returns (cache, tokens [steps, N]) -- plus the last step's logits [N, V] if return_logits.
    """
    step = functools.partial(
        _decode_step, params, cfg=cfg, block=block, full_attention_max=full_attention_max,
        attention=attention, rows=rows,
    )  # fmt: skip

    def one_step(carry, _):
        ck, cv, tok, pos, cnt = carry
        ck, cv, logits = step(ck, cv, tok, pos)
        nxt = sample_rows(logits, state.sampling._replace(counters=cnt))
        return (ck, cv, nxt, pos + 1, cnt + 1), (nxt, logits if return_logits else None)

    carry = (cache.k, cache.v, state.tokens, state.positions, state.sampling.counters)
    (ck, cv, *_), (toks, logits) = lax.scan(one_step, carry, None, length=steps)
    if return_logits:
        return KVCache(ck, cv), toks, logits[-1]
    return KVCache(ck, cv), toks


class Guide(NamedTuple):
    """Per-slot extras of a guided decode step (all [B, ...])."""

    bitmask: jax.Array  # [B, W] int32: the tokens each slot may take (llguidance's packed rows)
    logprobs: jax.Array  # [B] bool: does the slot's request want log-probabilities?


class GuidedStep(NamedTuple):
    """What a guided decode step returns per slot."""

    tokens: jax.Array  # [B] int32: the sampled tokens (within each slot's bitmask)
    logprob: jax.Array  # [B] float32: each sampled token's log-probability (the model's)
    top_ids: jax.Array  # [B, K] int32: the K most likely tokens, best first
    top_logprobs: jax.Array  # [B, K] float32: their log-probabilities


def decode_logits(
    params: Params,
    cache: KVCache,
    state: DecodeState,
    *,
    cfg: ModelConfig,
    block: int,
    full_attention_max: int = FULL_ATTENTION_MAX,
    attention: str = "xla",
) -> tuple[KVCache, jax.Array]:
    """The first half of a guided decode step: one step of every slot's model (K/V written),
    returning its next-token logits [B, V] (float32), left on the device for ``guided_sample``.
    Split from the sampling so the host builds the step's token masks while this runs."""
    ck, cv, logits = _decode_step(
        params, cache.k, cache.v, state.tokens, state.positions, cfg=cfg, block=block,
        full_attention_max=full_attention_max, attention=attention,
    )  # fmt: skip
    return KVCache(ck, cv), logits


def guided_sample(
    logits: jax.Array, sampling: SamplingArrays, guide: Guide, *, top_k: int = TOP_LOGPROBS
) -> GuidedStep:
    """The second half of a guided decode step: each slot's bitmask removes the tokens its
    grammar forbids before sampling; log-probabilities are the model's own (before the mask and
    the temperature, as vLLM reports them) and computed only if some slot wants them."""
    tok = sample_rows(apply_bitmask(logits, guide.bitmask), sampling)
    logprob, top_ids, top_lp = token_logprobs(logits, tok, guide.logprobs, top_k)
    return GuidedStep(tok, logprob, top_ids, top_lp)


def decode_guided(
    params: Params,
    cache: KVCache,
    state: DecodeState,
    guide: Guide,
    *,
    cfg: ModelConfig,
    block: int,
    top_k: int = TOP_LOGPROBS,
    full_attention_max: int = FULL_ATTENTION_MAX,
    attention: str = "xla",
) -> tuple[KVCache, GuidedStep]:
    """One decode step for every slot whose next token is constrained (structured outputs)
    and/or whose log-probabilities are wanted, as one function: ``decode_logits`` then
    ``guided_sample`` (the engine runs them as two programs, its masks built in between)."""
    cache, logits = decode_logits(
        params, cache, state, cfg=cfg, block=block, full_attention_max=full_attention_max,
        attention=attention,
    )  # fmt: skip
    return cache, guided_sample(logits, state.sampling, guide, top_k=top_k)
