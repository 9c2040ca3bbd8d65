"""JaxLLMEngine on tiny random checkpoints: conformance, static shapes, refill, prefix reuse,
sampling and stops, checked against transformers where a reference exists."""

from __future__ import annotations

import dataclasses

import pytest

from tests.optional import require

require("jax", "the JAX engine")
require("torch", "the reference implementation (transformers on PyTorch)")
require("transformers", "the reference implementation")

import jax
import torch
from transformers import AutoModelForCausalLM

from hyperbatch.engines.base import EngineConfig
from hyperbatch.engines.jax_llm.engine import JaxLLMEngine
from hyperbatch.engines.registry import engine_class
from hyperbatch.schemas.records import ErrorCode, FinishReason, Request
from tests.engines.conformance import PROMPTS, EngineConformance, chat, completion
from tests.helpers.tiny_models import tiny_llama_dir

OPTIONS = {"prefill_buckets": [16, 32, 64, 128], "decode_steps": 4, "attention_block": 32}


def make_engine(model_dir: str, batch_size: int = 4, **options) -> JaxLLMEngine:
    engine = JaxLLMEngine(
        EngineConfig(
            model=model_dir,
            batch_size=batch_size,
            max_seq_len=256,
            options={**OPTIONS, **options},
        )
    )
    engine.warmup()
    return engine


# Both execution paths: the CPU kernel with packed prefill, and XLA's attention with prefill
# buckets (the path TPUs and GPUs take).
ATTENTION = ["cpu", "xla"]


@pytest.fixture(scope="module", params=ATTENTION)
def engine(tiny_dirs, request) -> JaxLLMEngine:
    engine = make_engine(tiny_dirs["smollm2"], attention=request.param)
    assert engine.attention == request.param
    assert engine.packed == (request.param == "cpu")
    return engine


@pytest.fixture(scope="module")
def reference(tiny_dirs):
    return AutoModelForCausalLM.from_pretrained(
        tiny_dirs["smollm2"], dtype=torch.float32, attn_implementation="eager"
    ).eval()


def greedy_reference(ref, ids: list[int], n: int) -> list[int]:
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            out.append(int(ref(torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(ids) :]


class TestJaxEngineConformance(EngineConformance):
    @pytest.fixture(scope="class", params=ATTENTION)
    @classmethod
    def engine(cls, tiny_dirs, request):
        return make_engine(tiny_dirs["smollm2"], attention=request.param)


def test_registered_as_jax():
    assert engine_class("jax") is JaxLLMEngine


def test_unknown_option_is_refused(tiny_dirs):
    with pytest.raises(ValueError, match="decode_step not supported by the jax engine"):
        JaxLLMEngine(EngineConfig(model=tiny_dirs["smollm2"], options={"decode_step": 4}))


def test_compilations_never_depend_on_the_data(engine):
    # three decode programs (K steps; a guided step's model, then its masked sampling), plus one
    # packed prefill program or one per prompt-length bucket
    programs = 4 if engine.packed else len(engine.buckets) + 3
    assert engine.stats().compilations == programs
    compiles: list[str] = []
    listen = True

    def on_event(event: str, duration: float, **kw) -> None:
        if listen and event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        before = engine.stats().compilations
        engine.generate([chat("a", "Hi", max_tokens=1)])
        engine.generate([chat(f"b{i}", p, max_tokens=3 + 5 * i) for i, p in enumerate(PROMPTS)])
        engine.generate(
            [
                completion("c", " ".join(["word"] * 100), max_tokens=2),
                chat("d", PROMPTS[2], temperature=0.8, top_p=0.9, top_k=20, seed=5, max_tokens=9),
            ]
        )
        assert engine.stats().compilations == before
        assert compiles == []
    finally:
        listen = False


def test_greedy_matches_transformers_with_prefix_reuse(engine, reference):
    reqs = [chat(f"g{i}", p, max_tokens=8, ignore_eos=True) for i, p in enumerate(PROMPTS[:5])]
    results = engine.generate(reqs)
    for req, res in zip(reqs, results, strict=True):
        ids = engine.prompt_tokens(req)
        assert list(res.token_ids) == greedy_reference(reference, ids, 8), req.record_id
    # all share SmolLM2's default system prompt: the prefix is prefilled once and reused
    cached = [r.usage.cached_tokens for r in results]
    prefix = engine.tokenizer.chat_prefix(reqs[0].messages, engine.prompt_tokens(reqs[0]))
    assert prefix >= 30
    assert set(cached) <= {0, prefix}
    assert cached.count(prefix) >= 4
    again = engine.generate(reqs)  # the store outlives the call
    assert [r.usage.cached_tokens for r in again] == [prefix] * 5
    assert [r.token_ids for r in again] == [r.token_ids for r in results]


def test_slots_are_refilled_so_a_long_answer_does_not_hold_the_batch(engine):
    calls = []
    original = engine.programs.decode

    def counting(slots):
        calls.append(len(slots))
        return original(slots)

    reqs = [chat("long", PROMPTS[4], max_tokens=40, ignore_eos=True)]
    reqs += [chat(f"s{i}", PROMPTS[i % 6], max_tokens=4, ignore_eos=True) for i in range(8)]
    alone = [engine.generate([r])[0] for r in reqs]
    engine.programs.decode = counting
    try:
        together = engine.generate(reqs)
    finally:
        del engine.programs.decode
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    assert together[0].usage.completion_tokens == 40
    # the long answer needs 10 decode calls of 4 steps; the 8 short ones ride along in the
    # other 3 slots instead of waiting for it (a static batch would need 10 + 2 calls)
    assert len(calls) <= 10
    assert max(calls) == 4


def test_a_tail_decodes_only_its_busy_slots(tiny_dirs, reference):
    """When at most ``tail_batch`` slots are busy (a job's tail), decode calls compute only
    those, each in its own cache row: the same tokens as decoding the whole batch, fewer token
    slots computed."""
    full = make_engine(tiny_dirs["smollm2"], batch_size=16, attention="cpu", tail_batch=0)
    tail = make_engine(tiny_dirs["smollm2"], batch_size=16, attention="cpu")  # default: 16 / 4
    assert (full.programs.shapes.tail_batch, tail.programs.shapes.tail_batch) == (0, 4)
    assert tail.stats().compilations == full.stats().compilations + 1
    reqs = [chat(f"g{i}", PROMPTS[i % 6], max_tokens=3 + 6 * i, ignore_eos=True) for i in range(7)]
    reqs.append(chat("s", PROMPTS[1], temperature=1.0, seed=3, max_tokens=30, ignore_eos=True))
    calls: list[tuple[int, bool]] = []
    original = tail.programs.decode

    def seen(slots, tail_call=None):
        out = original(slots, tail_call)
        calls.append((len(slots), out[1] == 4 * OPTIONS["decode_steps"]))
        return out

    tail.programs.decode = seen
    try:
        theirs, ours = full.generate(reqs), tail.generate(reqs)
    finally:
        del tail.programs.decode
    assert [r.token_ids for r in ours] == [r.token_ids for r in theirs]
    assert [len(r.token_ids) for r in ours] == [3 + 6 * i for i in range(7)] + [30]
    last = tail.prompt_tokens(reqs[6])  # the longest answer: its last steps in the tail
    assert list(ours[6].token_ids) == greedy_reference(reference, last, 39)
    assert {n <= 4 for n, small in calls if small} == {True}
    assert {n > 4 for n, small in calls if not small} == {True}
    assert any(small for _, small in calls)
    assert tail.stats().useful_token_slots == full.stats().useful_token_slots
    assert tail.stats().computed_token_slots < full.stats().computed_token_slots
    assert tail.stats().compilations == full.stats().compilations + 1  # nothing compiled since
    with pytest.raises(ValueError, match="tail_batch needs the CPU attention kernel"):
        make_engine(tiny_dirs["smollm2"], batch_size=16, attention="xla", tail_batch=4)
    with pytest.raises(ValueError, match="tail_batch=16 must be below batch_size=16"):
        make_engine(tiny_dirs["smollm2"], batch_size=16, attention="cpu", tail_batch=16)


def test_seeded_sampling_does_not_depend_on_slot_or_batch(engine):
    def sampled(rid: str, seed: int, **kw) -> Request:
        return chat(
            rid, PROMPTS[1], temperature=1.0, seed=seed, max_tokens=12, ignore_eos=True, **kw
        )

    alone = engine.generate([sampled("a", 7)])[0]
    crowd = engine.generate(
        [
            chat("x", PROMPTS[0]),
            completion("y", PROMPTS[3]),
            sampled("b", 8),
            sampled("c", 7),
            chat("z", PROMPTS[5], temperature=0.5, seed=1),
        ]
    )
    assert crowd[3].token_ids == alone.token_ids
    assert crowd[2].token_ids != alone.token_ids  # another seed, another draw
    greedy = engine.generate([chat("g", PROMPTS[1], max_tokens=12, ignore_eos=True)])[0]
    top1 = engine.generate([sampled("t", 99, top_k=1)])[0]
    assert top1.token_ids == greedy.token_ids


def test_stop_token_ids_and_stop_strings(engine):
    base = engine.generate([completion("b", PROMPTS[4], max_tokens=12, ignore_eos=True)])[0]
    stop_id = base.token_ids[3]
    first = base.token_ids.index(stop_id)
    res = engine.generate(
        [completion("s", PROMPTS[4], max_tokens=12, ignore_eos=True, stop_token_ids=[stop_id])]
    )[0]
    assert res.finish_reason == FinishReason.STOP
    assert res.token_ids == base.token_ids[: first + 1]
    assert res.text == engine.tokenizer.decode(base.token_ids[:first])
    stop = base.text[5:8]
    res = engine.generate(
        [completion("t", PROMPTS[4], max_tokens=12, stop=[stop], ignore_eos=True)]
    )[0]
    assert res.finish_reason == FinishReason.STOP
    assert res.text == base.text[: base.text.find(stop)]


def test_eos_stops_unless_ignored(tmp_path, engine):
    probe = engine.generate([completion("p", PROMPTS[0], max_tokens=6, ignore_eos=True)])[0]
    eos = probe.token_ids[2]
    model_dir = tiny_llama_dir(str(tmp_path / "eos"), "smollm2", eos_token_id=eos)
    other = make_engine(model_dir)
    assert eos in other.info.eos_token_ids
    stopped, ignored = other.generate(
        [
            completion("e", PROMPTS[0], max_tokens=6),
            completion("i", PROMPTS[0], max_tokens=6, ignore_eos=True),
        ]
    )
    first = probe.token_ids.index(eos)
    assert stopped.finish_reason == FinishReason.STOP
    assert stopped.token_ids == probe.token_ids[: first + 1]
    assert ignored.finish_reason == FinishReason.LENGTH
    assert ignored.token_ids == probe.token_ids


def test_usage_padding_and_rejections(engine):
    before = engine.stats()
    reqs = [
        chat("ok", PROMPTS[0], max_tokens=3, ignore_eos=True),
        chat("pen", PROMPTS[0], presence_penalty=0.5),
        Request(record_id="empty", prompt=""),
        Request(record_id="big", prompt_token_ids=(10**6,), prompt="x"),
    ]
    ok, pen, empty, big = engine.generate(reqs)
    assert ok.ok
    assert ok.usage.prompt_tokens == len(engine.prompt_tokens(reqs[0]))
    assert pen.error_code == ErrorCode.ENGINE_REJECTED
    assert "penalt" in pen.error_message
    assert empty.error_code == ErrorCode.ENGINE_REJECTED
    assert big.error_code == ErrorCode.ENGINE_REJECTED
    after = engine.stats()
    computed = after.computed_token_slots - before.computed_token_slots
    useful = after.useful_token_slots - before.useful_token_slots
    assert 0 < useful <= computed
    assert after.records - before.records == 4
    prefill = after.prefill_seconds - before.prefill_seconds
    assert 0 < prefill < after.busy_seconds - before.busy_seconds


def test_a_device_failure_raises_and_leaves_the_engine_usable(engine):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated device failure")

    programs = engine.programs
    programs._decode_fn, programs._decode = programs._decode, broken
    try:
        # not the records' fault: the caller's shard fails (and is retried), no error records
        with pytest.raises(RuntimeError, match="simulated device failure"):
            engine.generate(
                [chat("one", PROMPTS[0], max_tokens=1), chat("two", PROMPTS[1], max_tokens=5)]
            )
    finally:
        programs._decode = programs._decode_fn
    again = engine.generate([chat("three", PROMPTS[1], max_tokens=5, ignore_eos=True)])[0]
    assert again.ok
    assert again.usage.completion_tokens == 5


def test_max_tokens_is_bounded_by_the_kv_cache(engine):
    ids = engine.prompt_tokens(chat("x", PROMPTS[2]))
    res = engine.generate([chat("x", PROMPTS[2], max_tokens=1000, ignore_eos=True)])[0]
    assert res.finish_reason == FinishReason.LENGTH
    assert res.usage.completion_tokens == engine.info.context_length - len(ids)


def test_stats_are_a_snapshot(engine):
    snap = engine.stats()
    engine.generate([chat("a", "Hi", max_tokens=2)])
    assert engine.stats().records == snap.records + 1
    assert dataclasses.asdict(snap)["records"] == snap.records


def test_packed_prefill_splits_long_prompts_across_calls(tiny_dirs, reference):
    """32 tokens per prefill call: prompts of 40-70 tokens are prefilled in pieces over several
    calls (several prompts share a call) and still decode exactly as transformers does."""
    small = make_engine(tiny_dirs["smollm2"], attention="cpu", prefill_tokens=32)
    calls = []
    original = small.programs.prefill_packed

    def counting(pieces):
        calls.append([(r.slot, r.start, r.start + len(r.ids)) for r in pieces])
        return original(pieces)

    small.programs.prefill_packed = counting
    reqs = [chat(f"l{i}", PROMPTS[i], max_tokens=6, ignore_eos=True) for i in (2, 4, 1)]
    results = small.generate(reqs)
    for req, res in zip(reqs, results, strict=True):
        assert list(res.token_ids) == greedy_reference(reference, small.prompt_tokens(req), 6)
    assert all(sum(e - a for _, a, e in call) <= 32 for call in calls)
    split = [i for i in range(3) if sum(i in {x for x, _, _ in c} for c in calls) > 1]
    assert split  # at least one prompt was prefilled over more than one call
    assert any(len({x for x, _, _ in c}) > 1 for c in calls)  # and calls hold several prompts


def test_a_part_full_prefill_call_is_carried_into_the_next_round(tiny_dirs, reference):
    """While slots decode and requests wait, the prompts of a round's last, part-full prefill
    call are not padded: they keep their slots, idle through the decode calls in between, and
    go on in the next round's first call. They still decode exactly as transformers does, and
    every result's charge still adds up to the engine's totals."""
    small = make_engine(
        tiny_dirs["smollm2"], attention="cpu", prefill_tokens=64, prefix_cache_rows=0
    )
    events: list[tuple[str, list[tuple[int, int, int]]]] = []
    prefill, decode = small.programs.prefill_packed, small.programs.decode

    def prefilling(pieces):
        events.append(("P", [(r.slot, r.start, r.start + len(r.ids)) for r in pieces]))
        return prefill(pieces)

    def decoding(slots, tail=None):
        events.append(("D", [(slot, 0, 0) for slot in slots]))
        return decode(slots, tail)

    small.programs.prefill_packed, small.programs.decode = prefilling, decoding
    lengths = [3 + 5 * (i % 4) for i in range(12)]
    reqs = [
        chat(f"c{i}", PROMPTS[i % 6], max_tokens=n, ignore_eos=True) for i, n in enumerate(lengths)
    ]
    before = small.stats()
    try:
        results = small.generate(reqs)
    finally:
        del small.programs.prefill_packed, small.programs.decode
    after = small.stats()
    for req, res, n in zip(reqs, results, lengths, strict=True):
        assert list(res.token_ids) == greedy_reference(reference, small.prompt_tokens(req), n)

    carried = []  # (slot, position): a prompt went on after decode calls it sat out
    last: dict[int, tuple[int, int]] = {}  # slot -> (where its prefill got to, event index)
    for i, (kind, rows) in enumerate(events):
        for slot, start, end in rows if kind == "P" else ():
            got, at = last.get(slot, (-1, i))
            between = [{s for s, _, _ in r} for k, r in events[at:i] if k == "D"]
            if start and start == got and between:
                assert not any(slot in d for d in between)  # it was held, not decoded
                carried.append((slot, start))
            last[slot] = (end, i)
    assert carried
    charged = [r.charge for r in results]
    assert sum(c.computed_token_slots for c in charged) == pytest.approx(
        after.computed_token_slots - before.computed_token_slots
    )
    assert sum(c.useful_token_slots for c in charged) == (
        after.useful_token_slots - before.useful_token_slots
    )


def test_the_loop_refills_slots_from_whoever_has_work(engine):
    """Two callers: the second one's requests arrive while the first one's decode. They join
    the running batch, and the whole takes fewer decode calls than serving the two callers one
    after the other (as the pipeline did before the engine loop: one shard at a time)."""
    first = [chat(f"a{i}", PROMPTS[i], max_tokens=24, ignore_eos=True) for i in range(2)]
    second = [chat(f"b{i}", PROMPTS[i % 6], max_tokens=6, ignore_eos=True) for i in range(6)]
    calls: list[int] = []
    original = engine.programs.decode

    def counting(slots):
        calls.append(len(slots))
        return original(slots)

    class Arrivals:
        """The first caller's requests; the second's once the first decode call has run."""

        def __init__(self):
            self.waves = [first, second]

        def take(self, max_n, wait):
            if not self.waves:
                return None
            if len(self.waves) == 1 and not calls:
                return []  # the second caller has not arrived yet
            return self.waves.pop(0)

    engine.programs.decode = counting
    try:
        alone = [engine.generate(first), engine.generate(second)]
        one_after_the_other = len(calls)
        calls.clear()
        got = {}
        engine.serve(Arrivals(), lambda res: got.setdefault(res.record_id, res))
    finally:
        del engine.programs.decode
    expected = {r.record_id: r.token_ids for group in alone for r in group}
    assert {k: v.token_ids for k, v in got.items()} == expected
    assert calls[0] == 2  # the first caller alone
    assert max(calls) == 4  # then the batch (4 slots) filled from the second caller
    assert len(calls) < one_after_the_other
