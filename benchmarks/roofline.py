"""The compute roofline the CPU benchmarks report against.

The machine's best fp32 matmul rate (numpy's BLAS on large matrices, all cores) is the most a
compute-bound model step can reach here; a benchmark divides the matmul FLOPs of its work (from
the model's shapes) by it. The machine's speed drifts (other jobs share it), so a benchmark
measures it in the same run as its legs, between them.
"""

from __future__ import annotations

import time

import numpy as np

SHAPES = ((2048, 2048, 2048), (2048, 576, 1536))  # square, and a SmolLM2 MLP at M = 2048


def sgemm_gflops(seconds: float = 1.0) -> float:
    """The best fp32 matmul rate (GFLOP/s) of ``SHAPES`` over about ``seconds`` each."""
    rng = np.random.default_rng(0)
    best = 0.0
    for m, k, n in SHAPES:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        a @ b
        start = time.perf_counter()
        while time.perf_counter() - start < seconds / len(SHAPES):
            t = time.perf_counter()
            a @ b
            best = max(best, 2 * m * k * n / (time.perf_counter() - t) / 1e9)
    return best


def decoder_flops_per_token(
    hidden: int, heads: int, kv_heads: int, head_dim: int, intermediate: int, layers: int
) -> float:
    """2 x the weights a token passes through in a Llama-family decoder's layers (q, k, v, o, the
    gated MLP); not the lm_head, not attention over the cache."""
    per_layer = hidden * (heads + 2 * kv_heads) * head_dim + heads * head_dim * hidden
    return 2.0 * layers * (per_layer + 3 * hidden * intermediate)
