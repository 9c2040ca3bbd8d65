"""The engine adapter: one engine loop per process fed by every shard in flight, ordering,
errors for prompts that cannot fit, failures, and accounting that adds up."""

from __future__ import annotations

import threading

import pytest

from hyperbatch.jobs import spec as job_spec
from hyperbatch.runners import engine_adapter
from hyperbatch.runners.engine_adapter import TimeLedger
from hyperbatch.schemas.formats import Location, Parsed
from hyperbatch.schemas.records import ErrorCode
from tests.engines.conformance import chat


def _spec(**kw):
    return job_spec.validate({"name": "ad", "task": "chat", "input": "x", "input_format": "jsonl",
                              "output": "/tmp", "model": "m", "engine": "fake", **kw},
                             check_resources=False)  # fmt: skip


def _parsed(*texts: str, prefix: str = "r") -> list[Parsed]:
    return [
        Parsed(chat(f"{prefix}{i}", t, max_tokens=3), Location("f", i + 1))
        for i, t in enumerate(texts)
    ]


@pytest.fixture
def loop():
    yield engine_adapter.shared_loop(_spec(engine_options={"max_prompt_tokens": 6}))
    engine_adapter.close_engines()


def test_results_in_input_order_longest_prompts_refused_and_load_charged_once(loop):
    seen = []
    # the engine sees them shortest first; prompts over 6 words are refused before it
    records = _parsed("a b c d", "a", "w " * 20, "a b")
    served = engine_adapter.serve(loop, records, on_result=lambda r: seen.append(r.record_id))
    assert [r.record_id for r in served.results] == ["r0", "r1", "r2", "r3"]
    assert served.results[2].error_code == ErrorCode.PROMPT_TOO_LONG
    assert [r.text for r in served.results[:2]] == ["d c b", "a"]
    # on_result order: the refusal first, then the fake engine's serving order, shortest first
    assert seen == ["r2", "r1", "r3", "r0"]
    assert served.charged_load_seconds == loop.load_seconds
    # the fake engine charges each request its own slots: max_prompt_tokens + max_tokens
    assert served.engine_delta.computed_token_slots == 3 * (6 + 3)
    assert served.engine_delta.useful_token_slots == sum(
        r.usage.prompt_tokens + r.usage.completion_tokens for r in served.results if r.ok
    )
    again = engine_adapter.serve(loop, _parsed("p q"))
    assert again.charged_load_seconds == 0.0
    assert again.engine_delta.computed_token_slots == 9


def test_shards_in_flight_share_one_loop_and_their_charges_add_up(loop):
    """Four shards on four threads at once: each gets exactly its own results, and the sum of
    their charges is the engine's total."""
    before = loop.engine.stats()
    out: dict[int, engine_adapter.Served] = {}

    def shard(n: int) -> None:
        words = [" ".join(f"w{n}x{i}" for i in range(1 + i % 5)) for i in range(7)]
        out[n] = engine_adapter.serve(loop, _parsed(*words, prefix=f"s{n}-"))

    threads = [threading.Thread(target=shard, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n, served in out.items():
        assert [r.record_id for r in served.results] == [f"s{n}-{i}" for i in range(7)]
        assert served.results[3].text == f"w{n}x3 w{n}x2 w{n}x1"  # its own words, reversed
    after = loop.engine.stats()
    total = sum(s.engine_delta.busy_seconds for s in out.values())
    assert total == pytest.approx(after.busy_seconds - before.busy_seconds, rel=1e-9, abs=1e-12)
    slots = sum(s.engine_delta.computed_token_slots for s in out.values())
    assert slots == after.computed_token_slots - before.computed_token_slots


def test_an_engine_failure_fails_the_shards_in_flight_and_the_loop_goes_on(loop):
    real = loop.engine.generate
    failing = threading.Event()

    def generate(requests, on_result=None):
        if failing.is_set():
            raise RuntimeError("simulated device failure")
        return real(requests, on_result)

    loop.engine.generate = generate
    failing.set()
    with pytest.raises(RuntimeError, match="simulated device failure"):
        engine_adapter.serve(loop, _parsed("a b"))
    failing.clear()
    assert engine_adapter.serve(loop, _parsed("c d")).results[0].text == "d c"


def test_closing_leaves_no_thread_behind():
    before = {t.name for t in threading.enumerate()}
    loop = engine_adapter.shared_loop(_spec(engine_options={"max_prompt_tokens": 7}))
    assert any(t.name.startswith("hyperbatch-engine-loop") for t in threading.enumerate())
    engine_adapter.serve(loop, _parsed("x"))
    engine_adapter.close_engines()
    assert {t.name for t in threading.enumerate()} == before


def test_the_ledger_splits_time_among_the_shards_in_flight():
    now = [0.0]
    ledger = TimeLedger(clock=lambda: now[0])
    ledger.start("a")
    now[0] = 10.0
    ledger.start("b")  # a alone for 10 s
    now[0] = 16.0  # both for 6 s: 3 each
    assert ledger.stop("a") == 13.0
    now[0] = 20.0  # b alone for 4 s
    assert ledger.stop("b") == 7.0
    now[0] = 30.0  # nobody in flight: nobody pays
    ledger.start("c")
    ledger.discard("c")
    ledger.discard("c")  # twice is fine
