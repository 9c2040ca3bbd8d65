"""The engine adapter: ordering, errors for prompts that cannot fit, and honest accounting."""

from __future__ import annotations

from hyperbatch.jobs import spec as job_spec
from hyperbatch.runners import engine_adapter
from hyperbatch.schemas.formats import Location, Parsed
from hyperbatch.schemas.records import ErrorCode
from tests.engines.conformance import chat


def _spec(**kw):
    return job_spec.validate({"name": "ad", "task": "chat", "input": "x", "input_format": "jsonl",
                              "output": "/tmp", "model": "m", "engine": "fake", **kw},
                             check_resources=False)  # fmt: skip


def _parsed(*texts: str) -> list[Parsed]:
    return [
        Parsed(chat(f"r{i}", t, max_tokens=3), Location("f", i + 1)) for i, t in enumerate(texts)
    ]


def test_results_in_input_order_longest_prompts_refused_and_first_shard_pays_the_load():
    spec = _spec(engine_options={"max_prompt_tokens": 6})
    loaded = engine_adapter.shared_engine(spec)
    seen = []
    # the engine sees them shortest first; prompts over 6 words are refused before it
    records = _parsed("a b c d", "a", "w " * 20, "a b")
    served = engine_adapter.serve(loaded, records, on_result=lambda r: seen.append(r.record_id))
    assert [r.record_id for r in served.results] == ["r0", "r1", "r2", "r3"]
    assert served.results[2].error_code == ErrorCode.PROMPT_TOO_LONG
    assert [r.text for r in served.results[:2]] == ["d c b", "a"]
    # on_result order: the refusal first, then the fake engine's serving order, shortest first
    assert seen == ["r2", "r1", "r3", "r0"]
    assert served.charged_load_seconds == loaded.load_seconds
    assert served.engine_delta.records == 3
    # work done on the engine outside the adapter is not charged to the next shard
    loaded.engine.generate([chat("elsewhere", "x y z")])
    again = engine_adapter.serve(loaded, _parsed("p q"))
    assert again.charged_load_seconds == 0.0
    assert again.engine_delta.records == 1
    assert again.engine_delta.prompt_tokens == 3  # "user: p q"
    engine_adapter.close_engines()
