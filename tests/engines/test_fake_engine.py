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


def test_ignore_eos_runs_on_to_max_tokens():
    engine = FakeEngine(EngineConfig(model="fake"))
    [res] = engine.generate([chat("a", "one two", max_tokens=5, ignore_eos=True)])
    assert res.text == "two one two one two"
    assert res.finish_reason == FinishReason.LENGTH


def test_options_are_typed_and_checked():
    from hyperbatch.engines.options import OptionsError

    with pytest.raises(OptionsError, match="max_prompt_tokens: must be at least 1"):
        FakeEngine(EngineConfig(model="fake", options={"max_prompt_tokens": 0}))
    with pytest.raises(OptionsError, match="bogus not supported by the fake engine"):
        FakeEngine(EngineConfig(model="fake", options={"bogus": 1}))
