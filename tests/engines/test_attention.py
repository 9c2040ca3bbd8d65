"""The shared whole-sequence attention (``engines/attention.py``) on a CPU: the C++ kernel and
XLA's loop form (where the kernel cannot be built) both equal a float64 numpy softmax
attention, for self- and cross-attention, head sizes that are and are not a whole vector, and
lengths that are not a multiple of the vector width."""

from __future__ import annotations

import numpy as np
import pytest

from tests.optional import require, unavailable

require("jax", "the JAX engines")

from hyperbatch.engines import attention as A
from hyperbatch.engines.jax_encoder import cpu_attention

SHAPES = [  # (rows, query positions, key positions, heads, head size)
    (2, 256, 256, 8, 8),  # a tiny UNet's self-attention: half a vector per head
    (2, 256, 77, 4, 40),  # cross-attention to a text encoder's 77 positions; SD-1.5's head size
    (1, 200, 131, 2, 64),  # neither length a multiple of the vector width
    (3, 130, 130, 3, 24),
    (1, 128, 128, 1, 256),  # the largest head the kernel takes
]


def reference(q, k, v, heads):
    b, lq, inner = q.shape
    d = inner // heads
    qh, kh, vh = (x.astype(np.float64).reshape(b, -1, heads, d) for x in (q, k, v))
    s = np.einsum("bqhd,bkhd->bhqk", qh, kh) / np.sqrt(d)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, vh).reshape(b, lq, inner)


@pytest.fixture(params=["kernel", "xla-loop"])
def form(request, monkeypatch):
    if request.param == "kernel":
        try:
            cpu_attention.load()
        except cpu_attention.KernelUnavailable as e:
            unavailable("the CPU attention kernel", str(e))
        assert A._cpu_kernel() is cpu_attention
    else:
        monkeypatch.setattr(A, "_cpu_kernel", lambda: None)
    return request.param


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cpu_attention_equals_softmax_attention(form, shape):
    import jax

    b, lq, lk, heads, d = shape
    rng = np.random.default_rng(lq * lk + d)
    q, k, v = (rng.standard_normal((b, n, heads * d)).astype(np.float32) for n in (lq, lk, lk))
    q *= 3.0  # peaked softmaxes, not near-uniform ones
    impl = A.AttentionImpl("cpu", query_block=64)  # the loop form takes 256 and 128 in blocks
    got = np.asarray(jax.jit(lambda q, k, v: A.attention(q, k, v, heads, impl))(q, k, v))
    want = reference(q, k, v, heads)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)  # float32 sums of 256 terms
    assert np.abs(want).max() > 0.5  # not a vanishing output that any answer would match
