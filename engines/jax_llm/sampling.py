"""Sampling on the device, per row: greedy, temperature, top-k and top-p, seeded per request;
token constraints (packed bitmasks) and log-probabilities for guided steps.

A row's draw depends only on its own key and counter (never on its slot or its neighbours), so a
seeded request samples the same tokens whatever batch it lands in.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


class SamplingArrays(NamedTuple):
    """Per-row sampling parameters of a device call (all [N])."""

    temperature: jax.Array  # float32; 0 = greedy
    top_k: jax.Array  # int32; 0 = off
    top_p: jax.Array  # float32; 1 = off
    keys: jax.Array  # [N, 2] uint32: the request's key data
    counters: jax.Array  # int32: tokens the request has sampled so far


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
    greedy_tokens = argmax(logits)
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


def argmax(x: jax.Array) -> jax.Array:
    """Each row's first index of its maximum (``jnp.argmax``) as int32: a max, then a min over
    the indices that reach it -- two plain reductions, which XLA's CPU backend runs twice as
    fast as its arg-reduction."""
    best = jnp.max(x, axis=-1, keepdims=True)
    index = lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    return jnp.min(jnp.where(x == best, index, x.shape[-1] - 1), axis=-1)


def sample_rows(logits: jax.Array, s: SamplingArrays) -> jax.Array:
    """``sample`` with a call's SamplingArrays."""
    return sample(logits, s.temperature, s.top_k, s.top_p, s.keys, s.counters)


TOP_LOGPROBS = 20  # alternatives a guided step returns per slot (OpenAI's most: top_logprobs 20)


def apply_bitmask(logits: jax.Array, bitmask: jax.Array) -> jax.Array:
    """Logits [N, V] with the tokens each row's packed bitmask [N, ceil(V/32)] int32 forbids set
    to -inf: bit j of word i allows token 32 * i + j (a row of -1 words allows everything)."""
    n, v = logits.shape
    shifts = jnp.arange(32, dtype=jnp.uint32)
    words = lax.bitcast_convert_type(bitmask, jnp.uint32)
    bits = (words[:, :, None] >> shifts) & jnp.uint32(1)  # [N, W, 32]
    allowed = bits.reshape(n, -1)[:, :v].astype(bool)
    return jnp.where(allowed, logits, -jnp.inf)


def token_logprobs(
    logits: jax.Array, tokens: jax.Array, wanted: jax.Array, k: int = TOP_LOGPROBS
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Each row's log-probability of ``tokens`` [N] under softmax(logits) and its ``k`` most
    likely tokens with theirs (ids [N, k] best first, logprobs [N, k]); zeros when no row is
    ``wanted`` (the log-softmax and top-k are skipped)."""
    n = logits.shape[0]

    def compute():
        lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        chosen = jnp.take_along_axis(lp, tokens[:, None], axis=-1)[:, 0]
        top_lp, top_ids = lax.top_k(lp, k)
        return chosen, top_ids.astype(jnp.int32), top_lp

    def skip():
        zeros = jnp.zeros((n, k), jnp.float32)
        return jnp.zeros((n,), jnp.float32), jnp.zeros((n, k), jnp.int32), zeros

    return lax.cond(jnp.any(wanted), compute, skip)
