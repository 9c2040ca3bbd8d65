"""Format plug-ins: parsing every kind of record, and encoding results the way users expect."""

from __future__ import annotations

import io
import json

import pytest

from hyperbatch.schemas import avro
from hyperbatch.schemas.formats import FORMATS, JobInfo, Location, Parsed, RecordError
from hyperbatch.schemas.records import (
    ErrorCode,
    FinishReason,
    Result,
    SamplingParams,
    TaskKind,
    Usage,
)
from tests.records import openai_chat

LOC = Location("in.jsonl", 7)
DEFAULTS = SamplingParams(max_tokens=50, temperature=0.0)


def parse(fmt: str, raw, task=TaskKind.CHAT):
    return FORMATS[fmt].parse(raw, LOC, task, DEFAULTS)


def line(obj) -> bytes:
    import json

    return json.dumps(obj).encode()


def test_openai_chat_maps_sampling_and_keeps_defaults():
    rec = openai_chat("x1", "Hello", max_completion_tokens=12, top_p=0.5, stop="END", seed=3)
    p = parse("openai", line(rec))
    assert isinstance(p, Parsed)
    assert p.request.record_id == "x1"
    assert p.request.messages == ({"role": "user", "content": "Hello"},)
    s = p.request.sampling
    assert (s.max_tokens, s.top_p, s.stop, s.seed, s.temperature) == (12, 0.5, ("END",), 3, 0.0)
    assert p.location == LOC


@pytest.mark.parametrize(
    ("raw", "code", "rid"),
    [
        (b"{not json", ErrorCode.INVALID_JSON, None),
        (b"[1, 2]", ErrorCode.INVALID_RECORD, None),
        (
            line({"method": "POST", "url": "/v1/chat/completions", "body": {}}),
            ErrorCode.MISSING_ID,
            None,
        ),
        (line({**openai_chat("a", "x"), "url": "/v1/embeddings"}), ErrorCode.UNSUPPORTED_URL, "a"),
        (line({**openai_chat("a", "x"), "method": "GET"}), ErrorCode.UNSUPPORTED_METHOD, "a"),
        (line({**openai_chat("a", "x"), "body": {"messages": []}}), ErrorCode.EMPTY_MESSAGES, "a"),
        (line(openai_chat("a", "   ")), ErrorCode.EMPTY_MESSAGES, "a"),
        (line(openai_chat("a", "x", temperature=-1)), ErrorCode.INVALID_SAMPLING, "a"),
        (line(openai_chat("a", "x", max_tokens=0)), ErrorCode.INVALID_SAMPLING, "a"),
        (line(openai_chat("a", "x", n=3)), ErrorCode.INVALID_RECORD, "a"),
        (line(openai_chat("a", "x", tools=[{}])), ErrorCode.INVALID_RECORD, "a"),
        (line({**openai_chat("a", "x"), "url": "/v1/completions"}), ErrorCode.UNSUPPORTED_URL, "a"),
    ],
)
def test_openai_bad_records_become_errors_with_reasons(raw, code, rid):
    err = parse("openai", raw)
    assert isinstance(err, RecordError)
    assert err.code == code
    assert err.record_id == rid
    assert err.location == LOC
    assert len(err.message) > 10


def test_openai_completion_url_for_completion_jobs():
    rec = {"custom_id": "c", "method": "POST", "url": "/v1/completions",
           "body": {"prompt": "Once upon", "max_tokens": 5}}  # fmt: skip
    p = parse("openai", line(rec), TaskKind.COMPLETION)
    assert p.request.prompt == "Once upon"
    assert p.request.messages is None


def test_jsonl_prompt_and_messages_and_strict_keys():
    p = parse("jsonl", line({"id": "1", "prompt": "hi", "sampling": {"top_k": 5},
                             "metadata": {"k": "v"}}))  # fmt: skip
    assert p.request.messages == ({"role": "user", "content": "hi"},)
    assert p.request.sampling.top_k == 5
    assert p.metadata == {"k": "v"}
    err = parse("jsonl", line({"id": "1", "prompt": "hi", "max_token": 5}))
    assert err.code == ErrorCode.INVALID_RECORD
    assert "max_token" in err.message
    both = parse("jsonl", line({"id": "1", "prompt": "hi", "messages": []}))
    assert both.code == ErrorCode.INVALID_RECORD
    chat_in_completion = parse("jsonl", line({"id": "1", "messages": [{"role": "user", "content": "q"}]}), TaskKind.COMPLETION)  # fmt: skip
    assert chat_in_completion.code == ErrorCode.INVALID_RECORD


def test_units_and_records_keep_line_numbers_across_blank_lines():
    fmt = FORMATS["jsonl"]
    data = b'{"id": "a", "prompt": "x"}\n\n   \n{"id": "b", "prompt": "y"}\n'
    units = list(fmt.units(io.BytesIO(data)))
    assert [len(u.raws) for u in units] == [1, 0, 0, 1]
    assert units[-1].end == len(data)
    assert [off for off, _ in fmt.records(b"", data)] == [0, 3]


def test_avro_round_trip_and_results():
    recs = [
        {"record_id": "r1", "prompt": "hello", "messages": None, "sampling": None, "metadata": None},
        {"record_id": "r2", "prompt": None, "messages": [{"role": "user", "content": "hey"}],
         "sampling": {"max_tokens": 3, "temperature": None, "top_p": None, "top_k": None,
                      "seed": None, "stop": None, "presence_penalty": None,
                      "frequency_penalty": None}, "metadata": {"src": "t"}},
    ]  # fmt: skip
    data = avro.to_avro_bytes("prompt_record", recs)
    fmt = FORMATS["avro"]
    header = fmt.header_length(io.BytesIO(data))
    units = list(fmt.units(io.BytesIO(data)))
    raws = [r for _, r in fmt.records(data[:header], data[units[0].start : units[-1].end])]
    parsed = [fmt.parse(r, LOC, TaskKind.CHAT, DEFAULTS) for r in raws]
    assert [p.request.record_id for p in parsed] == ["r1", "r2"]
    assert parsed[1].request.sampling.max_tokens == 3
    assert parsed[1].request.sampling.temperature == 0.0  # the job default, not overridden
    res = Result("r2", text="ok", finish_reason=FinishReason.STOP, usage=Usage(4, 1, 0))
    out = avro.from_avro_bytes(fmt.encode_results([(parsed[1], res)], JobInfo("j", "m", 0)))
    assert out == [{"id": "r2", "text": "ok", "finish_reason": "stop",
                    "usage": {"prompt_tokens": 4, "completion_tokens": 1, "cached_tokens": 0},
                    "model": "m", "job_id": "j", "metadata": {"src": "t"}, "logprobs": None}]  # fmt: skip


def test_openai_output_lines_follow_the_batch_output_format():
    import json

    p = parse("openai", line(openai_chat("q-1", "Hi")))
    res = Result("q-1", text="Hello!", finish_reason=FinishReason.LENGTH, usage=Usage(9, 2, 4))
    out = json.loads(
        FORMATS["openai"].encode_results([(p, res)], JobInfo("job", "smol", 1700000000))
    )
    assert out["custom_id"] == "q-1"
    assert out["error"] is None
    assert out["id"].startswith("batch_req_")
    assert out["response"]["status_code"] == 200
    body = out["response"]["body"]
    assert body["object"] == "chat.completion"
    assert body["model"] == "smol"
    assert body["created"] == 1700000000
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Hello!"},
                                "logprobs": None, "finish_reason": "length"}]  # fmt: skip
    assert body["usage"] == {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11,
                             "prompt_tokens_details": {"cached_tokens": 4}}  # fmt: skip


def test_openai_logprobs_requests_and_output():
    import json

    from hyperbatch.schemas.records import TokenLogprob

    chat_req = parse("openai", line(openai_chat("lp", "Hi", logprobs=True, top_logprobs=2)))
    assert chat_req.request.sampling.logprobs == 2
    assert (
        parse("openai", line(openai_chat("lp", "Hi", logprobs=True))).request.sampling.logprobs == 0
    )
    assert (
        parse("openai", line(openai_chat("lp", "Hi", top_logprobs=2))).code
        == ErrorCode.INVALID_SAMPLING
    )
    cmpl = {"custom_id": "c", "method": "POST", "url": "/v1/completions",
            "body": {"prompt": "Once", "logprobs": 3}}  # fmt: skip
    assert parse("openai", line(cmpl), TaskKind.COMPLETION).request.sampling.logprobs == 3

    lps = (
        TokenLogprob("He", -0.25, (("He", -0.25), ("Hi", -1.5))),
        TokenLogprob("llo", -0.5, (("llo", -0.5),)),
    )
    res = Result(
        "lp", text="Hello", finish_reason=FinishReason.STOP, usage=Usage(3, 2, 0), logprobs=lps
    )
    out = json.loads(FORMATS["openai"].encode_results([(chat_req, res)], JobInfo("j", "m", 0)))
    content = out["response"]["body"]["choices"][0]["logprobs"]["content"]
    assert content[0] == {"token": "He", "logprob": -0.25, "bytes": [72, 101],
                          "top_logprobs": [{"token": "He", "logprob": -0.25, "bytes": [72, 101]},
                                           {"token": "Hi", "logprob": -1.5, "bytes": [72, 105]}]}  # fmt: skip
    c = parse("openai", line(cmpl), TaskKind.COMPLETION)
    out = json.loads(FORMATS["openai"].encode_results([(c, res)], JobInfo("j", "m", 0)))
    assert out["response"]["body"]["choices"][0]["logprobs"] == {
        "tokens": ["He", "llo"], "token_logprobs": [-0.25, -0.5],
        "top_logprobs": [{"He": -0.25, "Hi": -1.5}, {"llo": -0.5}], "text_offset": [0, 2]}  # fmt: skip
    rec = avro.from_avro_bytes(
        FORMATS["avro"].encode_results([(chat_req, res)], JobInfo("j", "m", 0))
    )
    assert rec[0]["logprobs"][0]["top_logprobs"][1] == {"token": "Hi", "logprob": -1.5}


def test_messages_say_what_is_wrong_with_a_line():
    binary = FORMATS["openai"].parse(b"\xff\xfe\x00b\x00i\x00n\n", LOC, TaskKind.CHAT, DEFAULTS)
    assert isinstance(binary, RecordError)
    assert binary.code == ErrorCode.INVALID_JSON
    assert "not UTF-8 text" in binary.message
    assert "codec" not in binary.message
    number = FORMATS["openai"].parse(
        json.dumps({**openai_chat("x", "hi"), "custom_id": 123}).encode(), LOC, TaskKind.CHAT,
        DEFAULTS,
    )  # fmt: skip
    assert isinstance(number, RecordError)
    assert number.code == ErrorCode.MISSING_ID
    assert number.record_id == "123"
    assert "custom_id must be a string, got int 123" in number.message
