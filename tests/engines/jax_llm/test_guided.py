"""The JAX engine's structured outputs, log-probabilities and n > 1 on a tiny random checkpoint:
constrained and unconstrained requests in one static batch with no new compilation, every
constrained completion that stops follows its constraint, log-probabilities equal transformers',
seeded choices are reproducible, an unenforceable constraint fails its request only."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tests.optional import require

require("jax", "the JAX engine")
require("llguidance", "structured outputs (the grammar engine)")
require("jsonschema", "validating structured outputs")
require("torch", "the reference implementation (transformers on PyTorch)")

import jax
import jsonschema
import torch
from transformers import AutoModelForCausalLM

from hyperbatch.engines import grammar
from hyperbatch.engines.jax_llm.sampling import apply_bitmask
from hyperbatch.schemas.records import (
    ErrorCode,
    FinishReason,
    Request,
    SamplingParams,
    sampling_from_dict,
)
from tests.engines.jax_llm.test_engine import ATTENTION, make_engine

COLOUR = {
    "type": "object",
    "properties": {"colour": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"},
                   "n": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["colour", "ok", "n"],
    "additionalProperties": False,
}  # fmt: skip
REGEX = r"[0-9]{3}-[a-z]{2}"


def chat(rid: str, text: str, **sampling) -> Request:
    params = sampling_from_dict(sampling, base=SamplingParams(max_tokens=40))
    return Request(rid, params, messages=({"role": "user", "content": text},))


def compiles_during(fn) -> int:
    seen: list[str] = []
    listen = True

    def on_event(event: str, duration: float, **kw) -> None:
        if listen and event == "/jax/core/compile/backend_compile_duration":
            seen.append(event)

    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        fn()
    finally:
        listen = False
    return len(seen)


@pytest.fixture(scope="module", params=ATTENTION)
def engine(tiny_dirs, request):
    return make_engine(tiny_dirs["smollm2"], attention=request.param)


@pytest.fixture(scope="module")
def reference(tiny_dirs):
    return AutoModelForCausalLM.from_pretrained(
        tiny_dirs["smollm2"], dtype=torch.float32, attn_implementation="eager"
    ).eval()


def test_bitmask_is_applied_bit_by_bit():
    rng = np.random.default_rng(0)
    vocab = 70  # not a multiple of 32: the last word is partly padding
    allowed = rng.random((3, vocab)) < 0.3
    allowed[2] = True
    packed = np.zeros((3, grammar.words(vocab) * 32), bool)
    packed[:, :vocab] = allowed
    bitmask = np.packbits(packed, axis=-1, bitorder="little").view(np.int32)
    np.testing.assert_array_equal(grammar.unpack(bitmask, vocab), allowed)
    logits = rng.normal(size=(3, vocab)).astype(np.float32)
    out = np.asarray(apply_bitmask(logits, bitmask))
    np.testing.assert_array_equal(np.isfinite(out), allowed)
    np.testing.assert_array_equal(out[allowed], logits[allowed])
    assert (grammar.allow_all(2, vocab) == -1).all()


def test_constrained_and_plain_requests_share_the_batch_without_compiling(engine):
    reqs = [
        chat("plain", "Hello there", temperature=0.0, ignore_eos=True, max_tokens=12),
        chat("schema", "A colour", guided={"json_schema": COLOUR}, temperature=0.9, seed=1),
        chat("regex", "A code", guided={"regex": REGEX}, temperature=0.9, seed=2),
        chat("choice", "Yes?", guided={"choice": ["yes", "no", "maybe"]}, temperature=0.9),
        chat("object", "Some JSON", guided={"json_object": True}, max_tokens=8, seed=3),
        chat("logprobs", "Hello there", temperature=0.0, logprobs=2, max_tokens=6),
    ]
    alone = engine.generate([reqs[0]])[0]  # with the batch's unconstrained program only
    before = engine.stats().compilations
    results: list = []
    assert compiles_during(lambda: results.extend(engine.generate(reqs))) == 0
    assert engine.stats().compilations == before
    plain, schema, regex, choice, obj, lp = results
    # the plain request computed the same tokens one step per call beside constrained ones
    assert plain.token_ids == alone.token_ids
    assert schema.finish_reason == FinishReason.STOP
    jsonschema.validate(json.loads(schema.text), COLOUR)
    assert schema.text == json.dumps(json.loads(schema.text), separators=(",", ":"))  # compact
    assert regex.finish_reason == FinishReason.STOP
    assert re.fullmatch(REGEX, regex.text)
    assert choice.text in ("yes", "no", "maybe")
    assert obj.text.startswith("{")
    if obj.finish_reason == FinishReason.STOP:  # a random model may run out of tokens
        assert isinstance(json.loads(obj.text), dict)
    assert len(lp.logprobs) == len(lp.token_ids) == lp.usage.completion_tokens


def test_many_constrained_completions_all_validate(engine):
    reqs = [
        chat(f"s{i}", f"Colour number {i}", guided={"json_schema": COLOUR}, temperature=1.0,
             seed=i, max_tokens=40)
        for i in range(12)
    ]  # fmt: skip
    results = engine.generate(reqs)
    assert all(r.finish_reason == FinishReason.STOP for r in results)
    for r in results:
        jsonschema.validate(json.loads(r.text), COLOUR)
    assert len({r.text for r in results}) > 1  # sampled, not forced to one answer


def test_logprobs_equal_transformers(engine, reference):
    req = chat("lp", "Tell me a story", temperature=0.0, logprobs=3, max_tokens=5, ignore_eos=True)
    res = engine.generate([req])[0]
    ids = engine.prompt_tokens(req)
    with torch.no_grad():
        logits = reference(torch.tensor([ids + list(res.token_ids)])).logits[0]
    expected = torch.log_softmax(logits.float(), dim=-1).numpy()
    for i, (tok, lp) in enumerate(zip(res.token_ids, res.logprobs, strict=True)):
        row = expected[len(ids) - 1 + i]
        assert lp.logprob == pytest.approx(row[tok], abs=1e-4)
        assert lp.token_bytes == engine.tokenizer.token_bytes(tok)
        best = np.argsort(-row)[:3]
        assert [a for a, _ in lp.top] == [engine.tokenizer.token_text(int(t)) for t in best]
        np.testing.assert_allclose([v for _, v in lp.top], row[best], atol=1e-4)
        assert tok == best[0]  # greedy


def test_seeded_choices_are_reproducible_and_each_has_its_own_stream(engine):
    def ask(**kw):
        return chat("n", "Name a colour", temperature=1.0, seed=11, max_tokens=8,
                    ignore_eos=True, **kw)  # fmt: skip

    [three] = engine.generate([ask(n=3)])
    [again] = engine.generate([ask(n=3)])
    [one] = engine.generate([ask()])
    [with_lp] = engine.generate([ask(logprobs=1)])
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert [c.token_ids for c in three.choices] == [c.token_ids for c in again.choices]
    assert three.choices[0].token_ids == one.token_ids == three.token_ids
    assert len({c.token_ids for c in three.choices}) == 3
    assert three.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt, counted once
    assert three.usage.completion_tokens == 3 * 8
    assert with_lp.token_ids == one.token_ids  # asking for logprobs changes no draw
    # the choices share the prompt's prefill: the last two load it from the prefix store
    assert three.charge.useful_token_slots < 3 * (three.usage.prompt_tokens + 8)


def test_choices_of_a_constrained_request_all_follow_it(engine):
    [res] = engine.generate(
        [chat("nc", "Code?", guided={"regex": REGEX}, n=4, temperature=1.0, seed=3)]
    )
    assert len(res.choices) == 4
    for c in res.choices:
        assert c.finish_reason == FinishReason.STOP
        assert re.fullmatch(REGEX, c.text)


def test_an_unenforceable_constraint_fails_its_request_only(engine):
    lookaround = chat("look", "x", guided={"regex": "(?=a)a"})
    fmt = chat("fmt", "x", guided={"json_schema": {"type": "string", "format": "no-such-format"}})
    grammar_error = chat("lark", "x", guided={"grammar": "start: undefined_rule"})
    ok = chat("ok", "x", guided={"choice": ["a", "b"]})
    look, bad_format, bad_grammar, fine = engine.generate([lookaround, fmt, grammar_error, ok])
    assert look.error_code == ErrorCode.UNSUPPORTED_GUIDED
    assert "look-around" in look.error_message
    assert bad_format.error_code == ErrorCode.UNSUPPORTED_GUIDED
    assert "no-such-format" in bad_format.error_message
    assert bad_grammar.error_code == ErrorCode.UNSUPPORTED_GUIDED
    assert fine.ok
    assert fine.text in ("a", "b")


def test_a_stop_by_grammar_costs_no_extra_token(engine):
    [res] = engine.generate([chat("one", "?", guided={"choice": ["yes"]}, temperature=0.0)])
    assert (res.text, res.finish_reason) == ("yes", FinishReason.STOP)
    assert len(res.token_ids) == len(engine.tokenizer.tokenizer.encode("yes").ids)
