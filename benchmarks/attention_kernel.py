"""Decode attention on a CPU: our C++ kernel against the machine's memory-read rate.

Decode attention reads every live key and value once per step and does little arithmetic per
byte, so its roofline is the rate memory can be read. This times the JAX engine's CPU kernel
(``engines/jax_llm/cpu_attention``) on one decode step's attention of a SmolLM2-135M-shaped
model -- 30 layers, 3 KV heads of 64 dims, 3 query heads per KV head, batch 128 slots in a
1,024-position cache -- at several live context lengths, and reports the bytes of live K/V read
per second against the best streaming-read rate measured in the same run (numpy's and XLA's sum
over a 512 MiB array, which only the cache's size keeps out of the CPU caches).

    python benchmarks/attention_kernel.py [--contexts 40 100 400 600]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LAYERS, KVH, GROUP, HD, SLOTS, CACHE = 30, 3, 3, 64, 128, 1024


def best_of(fn, seconds: float) -> float:
    """The fastest of repeated calls of ``fn`` over about ``seconds`` (after one warm call)."""
    fn()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def read_rate(seconds: float) -> float:
    """The best streaming-read rate (GB/s) of numpy's and XLA's sum over 512 MiB of float32."""
    import jax
    import jax.numpy as jnp

    a = np.ones(128 * 2**20, np.float32)
    numpy_s = best_of(lambda: a.sum(), seconds / 2)
    ja = jnp.asarray(a)
    total = jax.jit(jnp.sum)
    xla_s = best_of(lambda: total(ja).block_until_ready(), seconds / 2)
    return a.nbytes / min(numpy_s, xla_s) / 1e9


def attention_rate(context: int, seconds: float) -> tuple[float, float]:
    """(ms per step, GB/s of live K/V) of the 30 layers' kernel calls at ``context`` positions
    (the slots' positions spread over context-15 .. context, as a batch's lengths differ)."""
    import jax
    import jax.numpy as jnp

    from hyperbatch.engines.jax_llm import cpu_attention, model

    cpu_attention.load()
    rng = np.random.default_rng(0)
    k_shape, v_shape = model.cache_shapes(SLOTS, KVH, HD, CACHE, "cpu")
    ks = [jnp.asarray(rng.standard_normal(k_shape, dtype=np.float32)) for _ in range(LAYERS)]
    vs = [jnp.asarray(rng.standard_normal(v_shape, dtype=np.float32)) for _ in range(LAYERS)]
    qkv = jnp.asarray(rng.standard_normal((SLOTS, KVH, GROUP + 2, HD), dtype=np.float32))
    pos = np.full(SLOTS, context, np.int32) - np.arange(SLOTS, dtype=np.int32) % 16
    angles = pos[:, None] * (1.0 / 10000 ** (np.arange(HD) % (HD // 2) / (HD // 2)))[None, :]
    cos, sin = jnp.asarray(np.cos(angles), jnp.float32), jnp.asarray(np.sin(angles), jnp.float32)
    rows, positions = jnp.arange(SLOTS, dtype=jnp.int32), jnp.asarray(pos)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(ks, vs, qkv):
        for i in range(LAYERS):  # each layer's queries depend on the last one's output
            out, ks[i], vs[i] = cpu_attention.attention_layer(
                qkv, cos, sin, ks[i], vs[i], rows, positions, None
            )
            qkv = qkv.at[:, :, :GROUP].add(1e-3 * out.reshape(SLOTS, KVH, GROUP, HD))
        return ks, vs, qkv

    state = [ks, vs, qkv]

    def run() -> None:
        state[0], state[1], state[2] = step(*state)
        state[2].block_until_ready()

    s = best_of(run, seconds)
    live = LAYERS * KVH * 2 * HD * 4 * int(np.sum(pos + 1))
    return s * 1e3, live / s / 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contexts", type=int, nargs="+", default=[40, 100, 400, 600])
    ap.add_argument("--seconds", type=float, default=3.0, help="timing per measurement")
    args = ap.parse_args(argv)
    before = read_rate(args.seconds)
    rows = [(c, *attention_rate(c, args.seconds)) for c in args.contexts]
    roof = max(before, read_rate(args.seconds))
    print(
        f"decode attention, {LAYERS} layers x {SLOTS} slots ({KVH} KV heads x {HD}, "
        f"group {GROUP}, fp32, {CACHE}-position cache); streaming read {roof:.1f} GB/s "
        f"(best of numpy and XLA sums, before {before:.1f})"
    )
    for context, ms, rate in rows:
        print(
            f"  context {context:4d}: {ms:6.1f} ms per step, {rate:5.1f} GB/s of live K/V "
            f"= {rate / roof:.0%} of the read rate"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
