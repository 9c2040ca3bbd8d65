"""The C++ CPU attention kernel equals attention written out in numpy, on every edge it has."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engines.jax_llm import cpu_attention
from tests.optional import unavailable


@pytest.fixture(scope="module")
def kernel() -> str:
    try:
        return cpu_attention.load()
    except cpu_attention.KernelUnavailable as e:
        unavailable("the CPU attention kernel", str(e))


def reference(q, k, v, rows, qpos, window):
    """softmax(q . k / sqrt(hd)) v over keys lo..qpos of each row's cache row, in float64."""
    n, t, kvh, g, hd = q.shape
    out = np.zeros(q.shape, np.float64)
    for i in range(n):
        for j in range(t):
            p = qpos[i, j]
            if not (0 <= rows[i] < k.shape[0] and 0 <= p < k.shape[3]):
                continue
            lo = max(0, p - window + 1) if window else 0
            keys = k[rows[i], :, :, lo : p + 1].astype(np.float64)  # [KVH, hd, W]
            vals = v[rows[i], :, lo : p + 1].astype(np.float64)  # [KVH, W, hd]
            s = np.einsum("kgh,khw->kgw", q[i, j].astype(np.float64), keys) / np.sqrt(hd)
            e = np.exp(s - s.max(-1, keepdims=True))
            out[i, j] = np.einsum("kgw,kwh->kgh", e / e.sum(-1, keepdims=True), vals)
    return out.reshape(n, t, kvh * g * hd)


@pytest.mark.parametrize(
    ("g", "hd", "s", "window"),
    [
        (3, 64, 128, 0),  # SmolLM2's layout, a whole-vector cache
        (1, 20, 37, 0),  # single-column and odd-length tails everywhere
        (4, 40, 64, 9),  # sliding window, hd with an 8-wide tail
        (8, 128, 45, 0),  # the largest group the kernel takes
    ],
)
def test_kernel_equals_reference(kernel, g, hd, s, window):
    rng = np.random.default_rng(g * 1000 + hd)
    n, t, kvh, r = 5, 3, 2, 4
    q = rng.standard_normal((n, t, kvh, g, hd), dtype=np.float32)
    k = rng.standard_normal((r, kvh, hd, s), dtype=np.float32)
    v = rng.standard_normal((r, kvh, s, hd), dtype=np.float32)
    rows = np.array([2, 0, r, 3, 1], np.int32)  # row 2 of the queries reads no cache row
    qpos = rng.integers(0, s, size=(n, t)).astype(np.int32)
    qpos[0] = [0, s - 1, s]  # the first key only, the last key, past the cache (idle)
    qpos[4, 0] = -1
    got = np.asarray(
        jax.jit(cpu_attention.attend, static_argnums=5)(
            jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), rows, qpos, window
        )
    )
    want = reference(q, k, v, rows, qpos, window)
    assert got.shape == (n, t, kvh * g * hd)
    assert np.abs(got - want).max() < 2e-5
    assert np.all(got[2] == 0)
    assert np.all(got[0, 2] == 0)
    assert np.all(got[4, 0] == 0)
    assert np.abs(got[1]).max() > 0.1  # real rows are not zeros


def test_a_row_does_not_depend_on_its_neighbours(kernel):
    rng = np.random.default_rng(7)
    q = rng.standard_normal((4, 1, 3, 3, 64), dtype=np.float32)
    k = rng.standard_normal((4, 3, 64, 128), dtype=np.float32)
    v = rng.standard_normal((4, 3, 128, 64), dtype=np.float32)
    rows = np.arange(4, dtype=np.int32)
    fn = jax.jit(cpu_attention.attend, static_argnums=5)
    a = np.asarray(fn(q, k, v, rows, np.array([[5], [100], [7], [127]], np.int32), None))
    b = np.asarray(fn(q, k, v, rows, np.array([[5], [3], [120], [0]], np.int32), None))
    assert np.array_equal(a[0], b[0])  # bit for bit, whatever the other rows attend to


def test_build_is_cached_per_source_and_machine(kernel, tmp_path):
    first = cpu_attention.build(str(tmp_path))
    assert first.startswith(str(tmp_path))
    assert first.endswith(".so")
    assert cpu_attention.build(str(tmp_path)) == first  # reused, not rebuilt
    assert len(list((tmp_path / "cpu-kernels").iterdir())) == 1
