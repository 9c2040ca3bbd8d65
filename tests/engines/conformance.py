"""The conformance suite every engine passes (engines.base contract).

Subclass ``EngineConformance`` in an engine's test module and provide a class-scoped ``engine``
fixture (already warmed up). The cases use chat and completion requests, greedy and seeded
sampling, stop strings, limits and impossible prompts, and check content, order and usage.
"""

from __future__ import annotations

import pytest

from hyperbatch.engines.base import Engine
from hyperbatch.schemas.records import (
    Charge,
    ErrorCode,
    FinishReason,
    Request,
    Result,
    sampling_from_dict,
)


def chat(record_id: str, text: str, **sampling) -> Request:
    return Request(
        record_id=record_id,
        messages=({"role": "user", "content": text},),
        sampling=sampling_from_dict({"temperature": 0.0, "max_tokens": 8, **sampling}),
    )


def completion(record_id: str, text: str, **sampling) -> Request:
    return Request(
        record_id=record_id,
        prompt=text,
        sampling=sampling_from_dict({"temperature": 0.0, "max_tokens": 8, **sampling}),
    )


PROMPTS = [
    "What is the capital of France?",
    "Name three colours.",
    "Write a haiku about the sea and the wind and the long grey rocks of the northern shore.",
    "2+2=",
    "Tell me a short story about a robot who learns to paint, in two sentences.",
    "Hi",
]


def _ok(results: list[Result]) -> list[Result]:
    bad = [r for r in results if not r.ok]
    assert not bad, f"unexpected error results: {bad}"
    return results


class EngineConformance:
    """Every engine passes these. ``engine`` is provided by the subclass."""

    @pytest.fixture(scope="class")
    @classmethod
    def engine(cls) -> Engine:  # pragma: no cover - always overridden
        raise AssertionError("the subclass must provide an 'engine' fixture")

    def test_one_result_per_request_in_order(self, engine: Engine):
        reqs = [chat(f"c{i}", p) for i, p in enumerate(PROMPTS)]
        reqs += [completion(f"p{i}", p) for i, p in enumerate(PROMPTS[:3])]
        results = _ok(engine.generate(reqs))
        assert [r.record_id for r in results] == [r.record_id for r in reqs]
        for req, res in zip(reqs, results, strict=True):
            assert isinstance(res.text, str)
            assert res.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
            assert 0 <= res.usage.completion_tokens <= req.sampling.max_tokens

    def test_usage_counts_prompt_tokens(self, engine: Engine):
        reqs = [chat("a", PROMPTS[0]), completion("b", PROMPTS[2])]
        results = _ok(engine.generate(reqs))
        for req, res in zip(reqs, results, strict=True):
            assert res.usage.prompt_tokens == len(engine.prompt_tokens(req))
            assert res.usage.completion_tokens == len(res.token_ids)

    def test_max_tokens_with_ignore_eos_is_exact(self, engine: Engine):
        reqs = [chat(f"m{n}", PROMPTS[4], max_tokens=n, ignore_eos=True) for n in (1, 3, 7)]
        results = _ok(engine.generate(reqs))
        for n, res in zip((1, 3, 7), results, strict=True):
            assert res.usage.completion_tokens == n
            assert res.finish_reason == FinishReason.LENGTH

    def test_greedy_is_deterministic_whatever_the_batch(self, engine: Engine):
        target = chat("t", PROMPTS[2], max_tokens=12, ignore_eos=True)
        alone = _ok(engine.generate([target]))[0]
        crowd = [chat(f"x{i}", p, max_tokens=3 + i) for i, p in enumerate(PROMPTS)]
        mixed = _ok(engine.generate([*crowd[:3], target, *crowd[3:]]))
        assert mixed[3].record_id == "t"
        assert mixed[3].text == alone.text
        assert mixed[3].token_ids == alone.token_ids

    def test_seeded_sampling_is_reproducible(self, engine: Engine):
        def sampled(rid: str) -> Request:
            return chat(rid, PROMPTS[1], temperature=1.0, top_p=0.9, seed=1234, max_tokens=10)

        first = _ok(engine.generate([sampled("s1")]))[0]
        again = _ok(engine.generate([chat("o", PROMPTS[0]), sampled("s2"), chat("q", PROMPTS[3])]))
        assert again[1].token_ids == first.token_ids

    def test_stop_string_truncates_output(self, engine: Engine):
        base = _ok(engine.generate([chat("b", PROMPTS[4], max_tokens=16, ignore_eos=True)]))[0]
        text = base.text or ""
        assert len(text.strip()) >= 4, f"need a longer answer to test stop strings: {text!r}"
        middle = len(text) // 2
        stop = text[middle : middle + 2]
        if not stop.strip():
            stop = text.strip()[-2:]
        res = _ok(
            engine.generate([chat("s", PROMPTS[4], max_tokens=16, ignore_eos=True, stop=[stop])])
        )[0]
        assert res.finish_reason == FinishReason.STOP
        assert stop not in (res.text or "")
        assert res.text == text[: text.find(stop)]

    def test_impossible_request_is_an_error_result_not_an_exception(self, engine: Engine):
        too_long = " ".join(["lorem"] * (engine.info.max_prompt_tokens + 16))
        reqs = [chat("ok1", PROMPTS[0]), chat("long", too_long), chat("ok2", PROMPTS[1])]
        results = engine.generate(reqs)
        assert [r.record_id for r in results] == ["ok1", "long", "ok2"]
        assert results[0].ok
        assert results[2].ok
        assert results[1].error_code == ErrorCode.PROMPT_TOO_LONG
        assert results[1].error_message

    def test_on_result_called_once_per_request(self, engine: Engine):
        seen: list[str] = []
        reqs = [chat(f"r{i}", p) for i, p in enumerate(PROMPTS[:4])]
        results = engine.generate(reqs, on_result=lambda r: seen.append(r.record_id))
        assert sorted(seen) == sorted(r.record_id for r in results)

    def test_stats_accumulate_usage(self, engine: Engine):
        before = engine.stats()
        b_req, b_prompt, b_comp = before.records, before.prompt_tokens, before.completion_tokens
        results = _ok(engine.generate([chat("u1", PROMPTS[0]), completion("u2", PROMPTS[3])]))
        after = engine.stats()
        assert after.records - b_req == 2
        assert after.prompt_tokens - b_prompt == sum(r.usage.prompt_tokens for r in results)
        assert after.completion_tokens - b_comp == sum(r.usage.completion_tokens for r in results)
        assert 0.0 <= after.padding_waste < 1.0

    def test_serve_from_a_source_equals_generate(self, engine: Engine):
        """The engine loop's entry point: requests handed over in waves while earlier ones are
        served come back with the same content as a plain ``generate``."""
        reqs = [chat(f"w{i}", p, max_tokens=6, ignore_eos=True) for i, p in enumerate(PROMPTS)]
        expected = {r.record_id: r.token_ids for r in _ok(engine.generate(reqs))}
        waves = [reqs[:2], reqs[2:3], [], reqs[3:]]

        class Waves:
            def take(self, max_n: int, wait: bool) -> list[Request] | None:
                if not waves:
                    return None
                wave = waves[0][:max_n]
                waves[0] = waves[0][max_n:]
                if not waves[0]:
                    waves.pop(0)
                return wave

        got: dict[str, Result] = {}
        engine.serve(Waves(), lambda r: got.setdefault(r.record_id, r))
        assert sorted(got) == sorted(expected)
        _ok(list(got.values()))
        assert {rid: r.token_ids for rid, r in got.items()} == expected

    def test_charges_add_up_to_the_engine_totals(self, engine: Engine):
        before = engine.stats()
        reqs = [chat(f"c{i}", p, max_tokens=3 + i) for i, p in enumerate(PROMPTS)]
        results = _ok(engine.generate(reqs))
        after = engine.stats()
        charge = sum((r.charge for r in results), Charge())
        assert charge.busy_seconds == pytest.approx(after.busy_seconds - before.busy_seconds)
        assert charge.prefill_seconds == pytest.approx(
            after.prefill_seconds - before.prefill_seconds
        )
        assert charge.computed_token_slots == pytest.approx(
            after.computed_token_slots - before.computed_token_slots
        )
        assert charge.useful_token_slots == after.useful_token_slots - before.useful_token_slots
        assert all(r.charge.useful_token_slots > 0 for r in results)
