"""The prompt limit is what the README says (issue 12, item 11c): ``max_seq_len`` is the KV
cache's length, prompt + completion, and a prompt may take up to ``max_seq_len - 1`` tokens
(the completion then gets the one position left); one token more is ``prompt_too_long``."""

from __future__ import annotations

from hyperbatch.engines.base import EngineConfig
from hyperbatch.engines.jax_llm.engine import JaxLLMEngine
from hyperbatch.schemas.records import ErrorCode, FinishReason, Request, sampling_from_dict

MAX_SEQ_LEN = 64


def prompt_of(n: int) -> Request:
    return Request(
        record_id=f"p{n}",
        prompt="x",  # the ids below are what is served
        prompt_token_ids=tuple(5 + i % 50 for i in range(n)),
        sampling=sampling_from_dict({"temperature": 0.0, "max_tokens": 8, "ignore_eos": True}),
    )


def test_a_prompt_may_take_max_seq_len_minus_one_tokens(tiny_dirs):
    # no prefill_buckets: the engine's own buckets, which go up to max_seq_len
    engine = JaxLLMEngine(
        EngineConfig(
            model=tiny_dirs["smollm2"],
            batch_size=2,
            max_seq_len=MAX_SEQ_LEN,
            options={"attention": "xla", "attention_block": 32, "decode_steps": 4},
        )
    )
    assert engine.info.context_length == MAX_SEQ_LEN
    assert engine.max_prompt == MAX_SEQ_LEN - 1
    at_limit, over, short = engine.generate(
        [prompt_of(MAX_SEQ_LEN - 1), prompt_of(MAX_SEQ_LEN), prompt_of(MAX_SEQ_LEN // 2)]
    )
    assert at_limit.ok, at_limit.error_message
    assert at_limit.usage.prompt_tokens == MAX_SEQ_LEN - 1
    assert at_limit.usage.completion_tokens == 1  # the one position the cache has left
    assert at_limit.finish_reason == FinishReason.LENGTH
    assert over.error_code == ErrorCode.PROMPT_TOO_LONG
    assert over.error_message == (
        f"prompt has {MAX_SEQ_LEN} tokens; this engine accepts at most {MAX_SEQ_LEN - 1} "
        "(raise max_seq_len or prefill_buckets, or shorten the prompt)"
    )
    assert short.ok
    assert short.usage.completion_tokens == 8
