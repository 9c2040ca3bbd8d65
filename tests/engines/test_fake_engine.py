"""The fake engine passes the conformance suite, and its arithmetic is what its docstring says."""

import pytest

from hyperbatch.engines.base import EngineConfig
from hyperbatch.engines.fake import FakeEngine
from hyperbatch.schemas.records import FinishReason
from tests.engines.conformance import EngineConformance, chat


class TestFakeEngineConformance(EngineConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def engine(cls):
        engine = FakeEngine(EngineConfig(model="fake", options={"max_prompt_tokens": 64}))
        engine.warmup()
        return engine


def test_fake_engine_reverses_words_and_counts_them():
    engine = FakeEngine(EngineConfig(model="fake"))
    [res] = engine.generate([chat("a", "alpha beta gamma delta", max_tokens=3)])
    assert res.text == "delta gamma beta"
    assert res.finish_reason == FinishReason.LENGTH
    # rendered "user: alpha beta gamma delta" = 5 words
    assert res.usage.prompt_tokens == 5
    assert res.usage.completion_tokens == 3
