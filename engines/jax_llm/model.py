"""The Llama-family decoder in JAX: parameters layout, prefill into a slot KV cache, decode steps.

Parameter layout (one pytree; ``layers`` is a list with one dict per layer):

  embed [V, D]            lm_head [D, V] (a copy of embed.T for tied models)    final_norm [D]
  layers[i]: attn_norm [D], wqkv [D, KVH, G+2, hd] (per KV head: its G query heads, K, V),
  wo [H*hd, D], mlp_norm [D], w_gate_up [D, 2, F], w_down [F, D]; optional biases bqkv
  [KVH, G+2, hd], bo [D], b_gate_up [2, F], b_down [D]

Fusing Q/K/V (and gate/up) makes one wide matmul instead of three (two), and grouping the fused
columns by KV head lets tensor parallelism shard them on the KV-head axis without collectives.

KV cache: ``k``/``v``, each a list of L per-layer arrays -- k [B, KVH, hd, S] (transposed, so
decode's scores are a plain matmul), v [B, KVH, S, hd] -- one row per decode slot (separate buffers, so a layer reads its cache without slicing a bigger array). A prefix store
of the same layout with R rows and fewer positions holds shared prefixes (e.g. a system prompt).
Attention walks the cache in blocks of ``block`` keys with an online softmax and a *dynamic*
number of blocks (the longest live sequence), so there is one program whatever the lengths, and a
row's result does not depend on how long its neighbours are (fully masked blocks add exact zeros).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hyperbatch.engines.jax_llm import cpu_attention
from hyperbatch.engines.jax_llm.config import ModelConfig

Params = dict[str, Any]  # the pytree described in the module docstring
MASKED = -1e30  # finite, so a fully masked block keeps the online softmax free of NaNs


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
# Sampling (on device, per row; a row's draw depends only on its own key and counter)


CANDIDATES = 256  # top-k / top-p look at the best 256 tokens first (a full sort if not enough)
CHUNK = 256  # inverse-CDF sampling walks the vocabulary in chunks of this size


def _filter_threshold(desc, top_k, top_p, lse):
    """Smallest kept value per row, from the row's candidates sorted descending [N, C]."""
    c = desc.shape[-1]
    idx = jnp.arange(c)[None, :]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, c), c)[:, None]
    desc = jnp.where(idx < k, desc, -jnp.inf)
    # top-p over the top-k renormalised distribution (as vLLM/HF apply them, k first)
    norm = jnp.where(top_k[:, None] > 0, jax.nn.logsumexp(desc, axis=-1, keepdims=True), lse)
    probs = jnp.exp(desc - norm)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each entry
    keep = jnp.maximum(jnp.sum((before < top_p[:, None]) & (idx < k), axis=-1), 1)
    # exact only if the kept set provably lies within the candidates
    closed = jnp.where(top_k > 0, top_k <= c, (keep < c) | (jnp.sum(probs, -1) >= top_p))
    return jnp.take_along_axis(desc, (keep - 1)[:, None], axis=-1), closed


def _bisect_threshold(x, top_k, top_p, iterations: int = 40):
    """The same threshold as ``_filter_threshold`` over the whole vocabulary, found by bisection
    on the value (O(V) per step) instead of a sort: the largest t whose kept set {x >= t} still
    holds k tokens, then the largest t whose kept mass still reaches top_p."""

    def largest(ok_at, lo, hi):
        def body(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            ok = ok_at(mid)
            return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

        return lax.fori_loop(0, iterations, body, (lo, hi))[0]

    finite = jnp.where(jnp.isfinite(x), x, jnp.inf)
    lo = jnp.min(finite, axis=-1, keepdims=True)
    hi = jnp.max(x, axis=-1, keepdims=True) + 1.0
    k = jnp.where(top_k > 0, top_k, x.shape[-1])[:, None]
    t_k = largest(lambda t: jnp.sum(x >= t, axis=-1, keepdims=True) >= k, lo, hi)
    xk = jnp.where(x >= t_k, x, -jnp.inf)
    p = jnp.exp(xk - jnp.max(xk, axis=-1, keepdims=True))
    need = top_p[:, None] * jnp.sum(p, axis=-1, keepdims=True)
    mass = lambda t: jnp.sum(jnp.where(xk >= t, p, 0.0), axis=-1, keepdims=True)  # noqa: E731
    return jnp.maximum(t_k, largest(lambda t: mass(t) >= need, lo, hi))


def _inverse_cdf(x, u):
    """Index where the row's CDF of softmax(x) first reaches u * total, without a full cumsum."""
    n, v = x.shape
    pad = -v % CHUNK
    x = jnp.pad(x, ((0, 0), (0, pad)), constant_values=-jnp.inf)
    p = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True)).reshape(n, -1, CHUNK)
    sums = p.sum(-1)
    cum = jnp.cumsum(sums, axis=-1)
    target = u * cum[:, -1]
    c = jnp.minimum(jnp.sum(cum < target[:, None], axis=-1), sums.shape[1] - 1)
    base = jnp.take_along_axis(cum - sums, c[:, None], axis=-1)
    inner = base + jnp.cumsum(jnp.take_along_axis(p, c[:, None, None], axis=1)[:, 0], axis=-1)
    j = jnp.minimum(jnp.sum(inner < target[:, None], axis=-1), CHUNK - 1)
    tok = c * CHUNK + j
    ok = jnp.take_along_axis(p.reshape(n, -1), tok[:, None], axis=-1)[:, 0] > 0
    return jnp.minimum(tok, v - 1).astype(jnp.int32), ok


def sample(logits, temperature, top_k, top_p, keys, counters):
    """Next token per row. temperature 0 = greedy; top_k 0 / top_p 1 disable those filters.

    The random draw of a row is ``uniform(fold_in(key_row, counter_row))``, inverted through the
    row's filtered CDF, so a seeded request samples the same tokens whatever slot or batch it is in.
    Filters look at the best ``CANDIDATES`` tokens (``lax.top_k``) and fall back to a full sort
    only when a row's nucleus does not close within them -- a full sort of the vocabulary per
    step costs more than the model on CPU.
    """
    greedy_tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    sampled_rows = temperature > 0

    def sampled():
        t = jnp.where(sampled_rows, temperature, 1.0)[:, None]
        scaled = logits / t
        needs_filter = sampled_rows & ((top_k > 0) | (top_p < 1.0))

        def filtered(x):
            lse = jax.nn.logsumexp(x, axis=-1, keepdims=True)
            c = min(CANDIDATES, x.shape[-1])
            thr, closed = _filter_threshold(lax.top_k(x, c)[0], top_k, top_p, lse)
            thr = lax.cond(
                jnp.all(closed | ~needs_filter),
                lambda: thr,
                lambda: _bisect_threshold(x, top_k, top_p),
            )
            thr = jnp.where(needs_filter[:, None], thr, -jnp.inf)
            return jnp.where(x >= thr, x, -jnp.inf)

        x = lax.cond(jnp.any(needs_filter), filtered, lambda x: x, scaled)

        def draw(kd, c):
            key = jax.random.fold_in(jax.random.wrap_key_data(kd, impl="threefry2x32"), c)
            return jax.random.uniform(key, dtype=jnp.float32)

        tok, ok = _inverse_cdf(x, jax.vmap(draw)(keys, counters))
        return jnp.where(sampled_rows & ok, tok, greedy_tokens)

    return lax.cond(jnp.any(sampled_rows), sampled, lambda: greedy_tokens)


# ----------------------------------------------------------------------------------------------
# Prefill: P sequences of T tokens each, written into their decode slots


def _kernel_layer(cfg: ModelConfig, lp: Params, x, kc, vc, rope, rows, pos):
    """One layer with the CPU kernel: x [N, T, D]; rope = (cos, sin) [N*T, hd]; rows/pos
    [N*T]: each token's cache row and position. Returns (x, kc, vc), the caches updated."""
    n, t = x.shape[:2]
    qkv = _project_qkv(cfg, lp, x)
    attn, kc, vc = cpu_attention.attention_layer(
        qkv.reshape(n * t, *qkv.shape[2:]), *rope, kc, vc, rows, pos, cfg.sliding_window
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


def _load_prefixes(cache, store, slots, rows):
    """Copy prefix-store rows ``rows`` into cache rows ``slots`` (first positions; a row >= R
    or a slot >= B copies nothing). Skipped when nothing loads. The store rows are picked by a
    one-hot matmul (exact: one product by 1.0 per element) -- XLA's CPU gather is many times
    slower than a matmul of this size."""
    b_rows = cache["v"][0].shape[0]
    r_rows, p_len = store["v"][0].shape[0], store["v"][0].shape[2]
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
            for c, st in zip(ck, store["k"], strict=True)
        ]
        cv = [
            c.at[slots, :, :p_len].set(rows_of(st), mode="drop")
            for c, st in zip(cv, store["v"], strict=True)
        ]
        return ck, cv

    return lax.cond(jnp.any(loads), load, lambda ck, cv: (ck, cv), cache["k"], cache["v"])


def _save_prefixes(store, ck, cv, slots, rows):
    """Copy the first positions of cache rows ``slots`` into store rows ``rows`` (R = none);
    skipped when nothing saves."""
    b_rows = cv[0].shape[0]
    r_rows, p_len = store["v"][0].shape[0], store["v"][0].shape[2]
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

    sk, sv = lax.cond(jnp.any(rows < r_rows), save, lambda sk, sv: (sk, sv), store["k"], store["v"])
    return {"k": sk, "v": sv}


def _sample_batch(params, cfg, h, batch):
    logits = _logits(params, cfg, h)
    return sample(
        logits,
        batch["temperature"],
        batch["top_k"],
        batch["top_p"],
        batch["keys"],
        batch["counters"],
    )


def prefill(params, cache, store, batch, *, cfg: ModelConfig, block: int, attention: str = "xla"):
    """Prefill a batch of P sequences into their slots and sample each one's next token.

    ``cache``/``store``: {"k": [...], "v": [...]}, per-layer arrays: k [rows, KVH, hd, len]
    (transposed), v [rows, KVH, len, hd].
    ``batch`` (all [P] unless said): tokens [P, T]; slots (B = padding row); starts (first
    position; > 0 after a reused prefix); lens (real tokens in the row); load_rows
    (prefix-store row copied into the slot first, R = none); save_rows (store row that receives
    the slot's first positions afterwards, R = none); temperature, top_k, top_p, keys [P, 2]
    uint32, counters (sampling).
    Returns (cache, store, next_tokens [P]). Not jitted here: each engine jits its own copy
    (static cfg/block, donated cache/store) so it can count its compilations.
    """
    slots = batch["slots"]
    ck, cv = _load_prefixes(cache, store, slots, batch["load_rows"])
    x, ck, cv = _prefill_layers(
        params,
        cfg,
        ck,
        cv,
        batch["tokens"],
        slots,
        batch["starts"],
        batch["lens"],
        block,
        attention,
    )
    store = _save_prefixes(store, ck, cv, slots, batch["save_rows"])
    last = jnp.maximum(batch["lens"] - 1, 0)
    h = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
    return {"k": ck, "v": cv}, store, _sample_batch(params, cfg, h, batch)


def prefill_packed(
    params, cache, store, batch, *, cfg: ModelConfig, block: int, attention: str = "cpu"
):
    """Prefill M tokens that belong to any mix of sequences: no padding but the call's tail.

    Each token carries its own slot and position, so a call holds many short prompts, or a piece
    of a long one (the rest follows in the next call: its earlier K/V are already in the cache).
    ``batch``: tokens, slots (B = padding), positions -- [M]; per piece of a sequence, [Q]:
    load_slots/load_rows (prefix-store row copied into the slot before the layers run),
    save_slots/save_rows (store row that receives the slot's first positions after them), emit
    (index of the token whose next token is sampled) and the sampling arrays as in ``prefill``.
    Meant for the CPU kernel, whose attention reads each token's own cache row; XLA's attention
    gathers whole rows per token here (correct, slow). Returns (cache, store, next_tokens [Q]).
    """
    ck, cv = _load_prefixes(cache, store, batch["load_slots"], batch["load_rows"])
    tokens, positions = batch["tokens"][:, None], batch["positions"]
    x, ck, cv = _prefill_layers(
        params,
        cfg,
        ck,
        cv,
        tokens,
        batch["slots"],
        positions,
        jnp.ones_like(positions),
        block,
        attention,
    )
    store = _save_prefixes(store, ck, cv, batch["save_slots"], batch["save_rows"])
    h = x[batch["emit"], 0]
    return {"k": ck, "v": cv}, store, _sample_batch(params, cfg, h, batch)


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
    k_shape = (n, cfg.num_kv_heads, cfg.head_dim, s_len)
    v_shape = (n, cfg.num_kv_heads, s_len, cfg.head_dim)
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


def decode(
    params,
    cache,
    state,
    *,
    cfg: ModelConfig,
    block: int,
    steps: int,
    return_logits: bool = False,
    full_attention_max: int = FULL_ATTENTION_MAX,
    attention: str = "xla",
):
    """``steps`` decode steps for every slot.

    ``state`` ([B] each): tokens (last token of each slot), positions (where that token goes;
    >= S for an idle slot, whose writes are dropped), counters (tokens sampled so far: the
    sampling counter), temperature, top_k, top_p, keys [B, 2].
    Returns (cache, tokens [steps, B]) -- plus the last step's logits [B, V] if return_logits.
    """
    b_rows, kvh, s_len, hd = cache["v"][0].shape
    rows = jnp.arange(b_rows)

    def one_step(carry, _):
        ck, cv, tok, pos, cnt = carry
        ck, cv = list(ck), list(cv)
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
        logits = _logits(params, cfg, x[:, 0])
        nxt = sample(
            logits, state["temperature"], state["top_k"], state["top_p"], state["keys"], cnt
        )
        return (ck, cv, nxt, pos + 1, cnt + 1), (nxt, logits if return_logits else None)

    carry = (cache["k"], cache["v"], state["tokens"], state["positions"], state["counters"])
    (ck, cv, *_), (toks, logits) = lax.scan(one_step, carry, None, length=steps)
    if return_logits:
        return {"k": ck, "v": cv}, toks, logits[-1]
    return {"k": ck, "v": cv}, toks
