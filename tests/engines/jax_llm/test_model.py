"""The JAX model equals transformers' PyTorch implementation on tiny random checkpoints."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from tests.optional import require

require("jax", "the JAX engine")
require("torch", "the reference implementation (transformers on PyTorch)")
require("transformers", "the reference implementation")

import jax
import jax.numpy as jnp
import torch
from transformers import AutoModelForCausalLM

from hyperbatch.engines.jax_llm import model, sampling, weights
from hyperbatch.engines.jax_llm.sampling import SamplingArrays
from tests.helpers.tiny_models import VARIANTS


def _reference(model_dir: str):
    return AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()


def _ours(model_dir: str, dtype=np.float32):
    cfg, tensors = weights.load_hf(model_dir)
    return cfg, jax.tree.map(jnp.asarray, weights.to_params(cfg, tensors, dtype))


@pytest.fixture(params=["xla", "cpu"])
def attention(request) -> str:
    """Both attention implementations: XLA's (every platform) and the CPU kernel."""
    if request.param == "cpu":
        request.getfixturevalue("cpu_kernel")
    return request.param


@pytest.mark.parametrize("variant", VARIANTS)
def test_prefill_logits_match_transformers(tiny_dirs, variant, attention):
    cfg, params = _ours(tiny_dirs[variant])
    ref = _reference(tiny_dirs[variant])
    # 40 positions: longer than mistral's 24-token sliding window, past llama3's original context
    tokens = np.random.RandomState(1).randint(0, cfg.vocab_size, size=(3, 40)).astype(np.int32)
    ours = np.asarray(
        model.forward_logits(params, jnp.asarray(tokens), cfg=cfg, block=16, attention=attention)
    )
    with torch.no_grad():
        expected = ref(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() <= 1e-4
    assert np.abs(expected).max() > 0.5  # the comparison is not between near-zero numbers


@pytest.mark.parametrize(
    ("variant", "full", "attention"),
    [
        ("qwen2", 512, "xla"),
        ("mistral", 512, "xla"),
        ("llama", 0, "xla"),
        ("qwen2", 0, "cpu"),
        ("mistral", 0, "cpu"),
    ],
    indirect=["attention"],
)
def test_decode_logits_match_transformers(tiny_dirs, variant, full, attention):
    """Prefill 20 tokens into a slot, then decode step by step: every step's logits equal the
    reference's logits for the same (greedy) continuation. ``full``: up to which cache length
    XLA's decode attends to whole rows (0 = always walk the cache in blocks)."""
    cfg, params = _ours(tiny_dirs[variant])
    ref = _reference(tiny_dirs[variant])
    prompt = np.random.RandomState(2).randint(0, cfg.vocab_size, size=20).astype(np.int32)
    block, seq, b_rows, steps = 16, 64, 2, 12

    def zeros(rows, positions):
        shapes = model.cache_shapes(rows, cfg.num_kv_heads, cfg.head_dim, positions, attention)
        return model.KVCache(*([jnp.zeros(s) for _ in range(cfg.num_layers)] for s in shapes))

    cache, store = zeros(b_rows, seq), zeros(1, 16)
    one = lambda v, dt=np.int32: np.array([v], dt)  # noqa: E731

    def greedy(n: int) -> SamplingArrays:
        return SamplingArrays(
            np.zeros(n, np.float32), np.zeros(n, np.int32), np.ones(n, np.float32),
            np.zeros((n, 2), np.uint32), np.zeros(n, np.int32),
        )  # fmt: skip

    batch = model.PrefillBatch(
        tokens=np.pad(prompt, (0, 12))[None],
        slots=one(1),
        starts=one(0),
        lens=one(20),
        load_rows=one(1),
        save_rows=one(1),
        sampling=greedy(1),
    )
    prefill = jax.jit(functools.partial(model.prefill, cfg=cfg, block=block, attention=attention))
    cache, store, first = prefill(params, cache, store, batch)
    decode = jax.jit(
        functools.partial(
            model.decode,
            cfg=cfg,
            block=block,
            steps=1,
            return_logits=True,
            full_attention_max=full,
            attention=attention,
        )
    )
    seq_ids = [*prompt.tolist(), int(first[0])]
    for _ in range(steps):
        state = model.DecodeState(
            tokens=np.array([0, seq_ids[-1]], np.int32),
            positions=np.array([seq, len(seq_ids) - 1], np.int32),  # slot 0 idle
            sampling=greedy(2),
        )
        cache, toks, logits = decode(params, cache, state)
        with torch.no_grad():
            expected = ref(torch.tensor([seq_ids])).logits[0, -1].numpy()
        assert np.abs(np.asarray(logits)[1] - expected).max() <= 1e-4
        assert int(toks[0, 1]) == int(expected.argmax())
        seq_ids.append(int(toks[0, 1]))


def test_bfloat16_params_track_float32(tiny_dirs):
    cfg, p32 = _ours(tiny_dirs["llama"])
    _, p16 = _ours(tiny_dirs["llama"], dtype=jnp.bfloat16)
    assert p16["layers"][0]["wqkv"].dtype == jnp.bfloat16
    tokens = jnp.asarray(np.random.RandomState(3).randint(0, cfg.vocab_size, size=(2, 24)))
    l32 = np.asarray(model.forward_logits(p32, tokens, cfg=cfg))
    l16 = np.asarray(model.forward_logits(p16, tokens, cfg=cfg))
    assert l16.dtype == np.float32
    assert np.abs(l16 - l32).max() < 0.1 * np.abs(l32).max()
    agree = (l16.argmax(-1) == l32.argmax(-1)).mean()
    assert agree > 0.8


def test_llama3_rope_scaling_changes_frequencies(tiny_dirs):
    cfg, _ = _ours(tiny_dirs["llama3"])
    assert cfg.rope_scaling[0] == "llama3"
    plain = 1.0 / (cfg.rope_theta ** (np.arange(0, cfg.head_dim, 2) / cfg.head_dim))
    scaled = cfg.inv_freq()
    assert np.allclose(scaled[0], plain[0])  # high frequencies untouched
    assert np.allclose(scaled[-1], plain[-1] / 8.0, rtol=1e-5)  # low ones divided by factor


def test_sampling_filters():
    logits = jnp.asarray(np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 4, np.float32)))
    keys = np.stack([np.array([0, s], np.uint32) for s in range(4)])
    sample = jax.jit(jax.vmap(sampling.sample, in_axes=(None, None, None, None, None, 0)))
    counters = np.arange(200, dtype=np.int32)[:, None] + np.zeros(4, np.int32)

    def draw(temp, top_k, top_p, n=200):
        toks = sample(
            logits,
            jnp.full(4, temp),
            jnp.full(4, top_k, jnp.int32),
            jnp.full(4, top_p),
            keys,
            counters[:n],
        )
        return set(np.asarray(toks).ravel().tolist())

    assert draw(0.0, 0, 1.0, n=3) == {0}  # greedy
    assert draw(1.0, 1, 1.0, n=20) == {0}  # top-1 is greedy
    assert draw(1.0, 2, 1.0) == {0, 1}  # top-2
    assert draw(1.0, 0, 0.7) == {0, 1}  # 0.5 < 0.7 <= 0.8: the first two
    assert draw(1.0, 0, 1.0) == {0, 1, 2, 3}


def test_argmax_is_jnp_argmax():
    """The sampler's argmax (two plain reductions) picks jnp.argmax's token: the first of tied
    maxima, index 0 for a row that is all -inf."""
    x = np.random.RandomState(3).randn(6, 1000).astype(np.float32)
    x[1, [7, 300, 999]] = 10.0  # ties: the first wins
    x[2] = -np.inf
    x[3, -1] = 50.0
    x[4] = np.round(x[4])  # many ties below the maximum
    got = np.asarray(jax.jit(sampling.argmax)(jnp.asarray(x)))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, np.asarray(jnp.argmax(jnp.asarray(x), axis=-1)))
    assert got[1] == 7


def test_filter_thresholds_agree_with_a_full_sort():
    """Candidates (top 256) when they suffice, bisection otherwise: both equal the sort."""
    x = jnp.asarray(np.random.RandomState(5).randn(8, 5000).astype(np.float32) * 2)
    top_k = jnp.array([0, 10, 300, 1000, 0, 0, 50, 2000], jnp.int32)
    top_p = jnp.array([0.9, 1.0, 0.5, 0.95, 0.3, 0.999, 0.8, 0.7], jnp.float32)
    lse = jax.nn.logsumexp(x, -1, keepdims=True)
    exact = np.asarray(sampling._filter_threshold(-jnp.sort(-x, -1), top_k, top_p, lse)[0])[:, 0]
    bisect = np.asarray(sampling._bisect_threshold(x, top_k, top_p))[:, 0]
    cand, closed = sampling._filter_threshold(jax.lax.top_k(x, 256)[0], top_k, top_p, lse)
    assert np.array_equal(bisect, exact)
    closed = np.asarray(closed)
    assert closed.tolist() == [False, True, False, False, True, False, True, False]
    assert np.array_equal(np.asarray(cand)[closed, 0], exact[closed])
