"""The embedding engine behind ``engine: jax``, ``task: embedding`` (on a tiny BERT): one result
per request in order, every text's vector equal to the encoder's own, ``dimensions`` cut and
renormalised, bad requests refused alone, and charges that add up to the engine's totals."""

from __future__ import annotations

import numpy as np
import pytest

from hyperbatch.engines.base import EngineConfig
from hyperbatch.engines.embedding import truncate_dimensions
from hyperbatch.engines.jax_encoder.engine import JaxEncoderEngine
from hyperbatch.engines.registry import engine_class
from hyperbatch.schemas.records import Charge, ErrorCode, Request


@pytest.fixture(scope="module")
def engine(tiny_bert):
    e = JaxEncoderEngine(EngineConfig(model=tiny_bert, options={"buckets": [16, 48]}))
    e.warmup()
    return e


def test_the_registry_serves_embedding_jobs_with_this_engine():
    assert engine_class("jax", "embedding") is JaxEncoderEngine


def test_results_in_order_with_the_encoders_vectors(engine):
    texts = ["hello world", "a somewhat longer sentence about the sea " * 3, "x y"]
    requests = [
        Request("one", texts=(texts[0],)),
        Request("bad", texts=("fine", "  ")),
        Request("two", texts=(texts[1], texts[2])),
        Request("cut", texts=(texts[0],), dimensions=4),
        Request("wide", texts=(texts[0],), dimensions=engine.dimensions + 1),
    ]
    before = engine.stats()
    seen = []
    results = engine.generate(requests, on_result=seen.append)
    assert [r.record_id for r in results] == [r.record_id for r in requests]
    assert seen == results
    by = {r.record_id: r for r in results}
    assert (by["bad"].error_code, by["wide"].error_code) == (
        ErrorCode.EMPTY_INPUT,
        ErrorCode.INVALID_DIMENSIONS,
    )

    reference, tokens = engine.encoder.encode_texts(texts)
    np.testing.assert_allclose(by["one"].embeddings[0], reference[0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(by["two"].embeddings), reference[1:], atol=1e-6)
    assert by["two"].token_counts == tuple(int(n) for n in tokens.lengths[1:])
    assert by["two"].usage.prompt_tokens == int(tokens.lengths[1:].sum())
    assert by["two"].truncated == tuple(bool(t) for t in tokens.truncated[1:])
    assert tokens.truncated[1]  # longer than the tiny model's 40 tokens
    cut = truncate_dimensions(reference[:1], 4)[0]
    np.testing.assert_allclose(by["cut"].embeddings[0], cut, atol=1e-6)
    assert np.linalg.norm(by["cut"].embeddings[0]) == pytest.approx(1.0, abs=1e-6)

    delta = engine.stats() - before
    charged = sum((r.charge for r in results), Charge())
    assert delta.busy_seconds == pytest.approx(charged.busy_seconds)
    assert delta.computed_token_slots == pytest.approx(charged.computed_token_slots)
    assert delta.useful_token_slots == charged.useful_token_slots
    assert (delta.records, delta.results, delta.errors, delta.embeddings) == (5, 3, 2, 4)
