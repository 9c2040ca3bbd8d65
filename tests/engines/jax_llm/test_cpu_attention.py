"""The C++ CPU attention-layer kernel equals the same layer written out in numpy, on every edge
it has: RoPE, cache writes in place, tokens that share a row, windows, dead rows and tails."""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest

from tests.optional import require

require("jax", "the JAX engine")

import jax
import jax.numpy as jnp

from hyperbatch.engines.jax_llm import cpu_attention


def rope(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + np.concatenate([-x[..., half:], x[..., :half]], -1) * sin


def reference(qkv, cos, sin, k, v, rows, pos, window):
    """Write RoPE(k), v of every live token, then softmax(q . k / sqrt(hd)) v over keys lo..pos
    of its row, in float64. Returns (out [N, KVH*G*hd], k, v)."""
    n, kvh, g2, hd = qkv.shape
    g = g2 - 2
    k, v = k.astype(np.float64), v.astype(np.float64)
    live = [0 <= rows[i] < k.shape[0] and 0 <= pos[i] < k.shape[3] for i in range(n)]
    for i in np.flatnonzero(live):
        k[rows[i], :, :, pos[i]] = rope(qkv[i, :, g], cos[i], sin[i])
        v[rows[i], :, pos[i]] = qkv[i, :, g + 1]
    out = np.zeros((n, kvh, g, hd))
    for i in np.flatnonzero(live):
        p = pos[i]
        lo = max(0, p - window + 1) if window else 0
        q = rope(qkv[i, :, :g].astype(np.float64), cos[i], sin[i])  # [KVH, G, hd]
        s = np.einsum("kgh,khw->kgw", q, k[rows[i], :, :, lo : p + 1]) / np.sqrt(hd)
        e = np.exp(s - s.max(-1, keepdims=True))
        out[i] = np.einsum("kgw,kwh->kgh", e / e.sum(-1, keepdims=True), v[rows[i], :, lo : p + 1])
    return out.reshape(n, -1), k, v


def tile_keys(k):
    """k [R, KVH, hd, S] -> the kernel's layout [R, KVH, ceil(S/16), hd, 16] (padding: NaN,
    which the kernel must never read)."""
    r, kvh, hd, s = k.shape
    t = -(-s // cpu_attention.TILE)
    padded = np.full((r, kvh, hd, t * cpu_attention.TILE), np.nan, np.float32)
    padded[..., :s] = k
    out = padded.reshape(r, kvh, hd, t, cpu_attention.TILE).transpose(0, 1, 3, 2, 4)
    assert out.shape == cpu_attention.key_cache_shape(r, kvh, hd, s)
    return np.ascontiguousarray(out)


def untile_keys(kt, s):
    """The inverse of ``tile_keys``: [R, KVH, T, hd, 16] -> [R, KVH, hd, S]."""
    r, kvh, t, hd, tile = kt.shape
    return np.asarray(kt).transpose(0, 1, 3, 2, 4).reshape(r, kvh, hd, t * tile)[..., :s]


def test_tiles_hold_each_position_once():
    k = np.arange(2 * 3 * 4 * 37, dtype=np.float32).reshape(2, 3, 4, 37)
    kt = tile_keys(k)
    assert kt.shape == (2, 3, 3, 4, 16)
    assert kt[1, 2, 2, 3, 4] == k[1, 2, 3, 36]  # position 36 = tile 2, lane 4
    np.testing.assert_array_equal(untile_keys(kt, 37), k)


def tables(pos, hd):
    inv = 1.0 / (10000.0 ** (np.arange(0, hd, 2) / hd))
    f = np.concatenate([np.outer(pos, inv)] * 2, -1)
    return np.cos(f).astype(np.float32), np.sin(f).astype(np.float32)


@functools.partial(jax.jit, static_argnums=7, donate_argnums=(3, 4))
def layer(qkv, cos, sin, k, v, rows, pos, window):
    return cpu_attention.attention_layer(qkv, cos, sin, k, v, rows, pos, window)


@pytest.mark.parametrize(
    ("g", "hd", "s", "window"),
    [
        (3, 64, 128, 0),  # SmolLM2's layout, a whole-vector cache
        (3, 64, 1024, 0),  # the default cache length: key rows 4 KiB apart
        (1, 20, 37, 0),  # single-column and odd-length tails everywhere
        (4, 40, 64, 9),  # sliding window, hd with an 8-wide tail
        (8, 128, 45, 0),  # the largest group the kernel takes
    ],
)
def test_kernel_equals_reference(cpu_kernel, g, hd, s, window):
    rng = np.random.default_rng(g * 1000 + hd)
    kvh, r = 2, 4
    k = rng.standard_normal((r, kvh, hd, s), dtype=np.float32)
    v = rng.standard_normal((r, kvh, s, hd), dtype=np.float32)
    # tokens 0-2 are one prompt's consecutive positions in row 1 (they see each other); then a
    # token at the first position, one at the last, one past the cache (idle), one in no row
    rows = np.array([1, 1, 1, 0, 3, 2, r, 2], np.int32)
    pos = np.array([10, 11, 12, 0, s - 1, s, 5, -1], np.int32)
    qkv = rng.standard_normal((len(rows), kvh, g + 2, hd), dtype=np.float32)
    cos, sin = tables(np.clip(pos, 0, None), hd)
    want, want_k, want_v = reference(qkv, cos, sin, k, v, rows, pos, window)
    kt = jnp.asarray(tile_keys(k))
    out, got_k, got_v = layer(qkv, cos, sin, kt, jnp.asarray(v), rows, pos, window)
    out, got_k, got_v = np.asarray(out), untile_keys(got_k, s), np.asarray(got_v)
    assert out.shape == (len(rows), kvh * g * hd)
    assert np.abs(out - want).max() < 2e-5
    assert np.abs(got_k - want_k).max() < 1e-5
    assert np.abs(got_v - want_v).max() < 1e-6
    assert np.all(out[5:] == 0)  # idle, no row, negative position: zeros, nothing written
    assert np.abs(out[:5]).max() > 0.1
    changed = np.argwhere(np.any(got_k != k, axis=2))  # (row, head, position) written
    assert {(int(a), int(c)) for a, _, c in changed} == {
        (1, 10),
        (1, 11),
        (1, 12),
        (0, 0),
        (3, s - 1),
    }


def test_a_token_does_not_depend_on_its_neighbours(cpu_kernel):
    rng = np.random.default_rng(7)
    k = rng.standard_normal((4, 3, 64, 128), dtype=np.float32)
    v = rng.standard_normal((4, 3, 128, 64), dtype=np.float32)
    qkv = rng.standard_normal((4, 3, 5, 64), dtype=np.float32)
    rows = np.arange(4, dtype=np.int32)

    def first(pos):
        cos, sin = tables(pos, 64)
        kt = jnp.asarray(tile_keys(k))
        return np.asarray(layer(qkv, cos, sin, kt, jnp.asarray(v), rows, pos, None)[0])

    a = first(np.array([5, 100, 7, 127], np.int32))
    b = first(np.array([5, 3, 120, 0], np.int32))
    assert np.array_equal(a[0], b[0])  # bit for bit, whatever the other tokens attend to


def test_copy_positions_copies_a_prefix_and_nothing_else(cpu_kernel):
    """Store rows -> cache rows (their own row counts and lengths): the first ``lens``
    positions of each pair in range, for K (whole tiles, then part of one) and V."""
    rng = np.random.default_rng(3)
    sk = rng.standard_normal((3, 2, 8, 20), dtype=np.float32)  # 3 store rows of 20 positions
    sv = rng.standard_normal((3, 2, 20, 8), dtype=np.float32)
    dk = rng.standard_normal((4, 2, 8, 37), dtype=np.float32)  # 4 cache rows of 37
    dv = rng.standard_normal((4, 2, 37, 8), dtype=np.float32)
    src = np.array([2, 0, 1, 3, 1, 2], np.int32)  # the 4th names no store row
    dst = np.array([1, 3, 4, 0, 0, 2], np.int32)  # the 3rd names no cache row
    lens = np.array([5, 40, 7, 9, 0, 16], np.int32)  # 40: more than a store row has
    k, v = jax.jit(cpu_attention.copy_positions)(
        tile_keys(sk), sv, tile_keys(dk), dv, src, dst, lens
    )
    want_k, want_v = dk.copy(), dv.copy()
    want_k[1, :, :, :5], want_v[1, :, :5] = sk[2, :, :, :5], sv[2, :, :5]
    want_k[3, :, :, :20], want_v[3, :, :20] = sk[0], sv[0]
    want_k[2, :, :, :16], want_v[2, :, :16] = sk[2, :, :, :16], sv[2, :, :16]
    np.testing.assert_array_equal(untile_keys(k, 37), want_k)
    np.testing.assert_array_equal(np.asarray(v), want_v)
    assert not np.array_equal(want_k, dk)
    # the tiles' padding past the cache's 37 positions is never written
    assert np.isnan(np.asarray(k)[:, :, 2, :, 5:]).all()


def test_build_is_cached_per_source_and_machine(cpu_kernel, tmp_path):
    first = cpu_attention.build(str(tmp_path))
    assert first.startswith(str(tmp_path))
    assert first.endswith(".so")
    built = os.stat(first).st_mtime_ns
    assert cpu_attention.build(str(tmp_path)) == first
    assert os.stat(first).st_mtime_ns == built  # reused, not rebuilt
    assert len(list((tmp_path / "cpu-kernels").iterdir())) == 1
