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
        (line(openai_chat("a", "x", n=0)), ErrorCode.INVALID_SAMPLING, "a"),
        (line(openai_chat("a", "x", model=3)), ErrorCode.INVALID_RECORD, "a"),
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
                    "usage": {"prompt_tokens": 4, "completion_tokens": 1, "cached_tokens": 0,
                              "image_tokens": 0},  # Avro fills the default in
                    "model": "m", "job_id": "j", "metadata": {"src": "t"}, "logprobs": None,
                    "choices": None}]  # fmt: skip


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
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Hello!",
                                                        "refusal": None},
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


# --------------------------------------------------------------------------- the rest of OpenAI


def test_openai_error_lines_look_like_openais_error_file():
    errors = [
        RecordError(None, Location("in.jsonl", 3), ErrorCode.INVALID_JSON, "not valid JSON: x"),
        RecordError("r1", LOC, ErrorCode.MODEL_MISMATCH, "the record asks for model 'gpt-4o'"),
        RecordError("r2", LOC, ErrorCode.ENGINE_FAILED, "vLLM finished with 'abort'"),
    ]
    lines = [json.loads(x) for x in FORMATS["openai"].encode_errors(errors, JobInfo("j", "m", 0)).splitlines()]  # fmt: skip
    unread, mismatch, failed = lines
    assert set(unread) == {"id", "custom_id", "response", "error"}
    assert (unread["custom_id"], unread["response"]) == (None, None)
    assert unread["error"] == {"code": "invalid_json", "message": "in.jsonl:3: not valid JSON: x"}
    assert mismatch["custom_id"] == "r1"
    assert mismatch["error"] == {"code": "model_mismatch",
                                 "message": "the record asks for model 'gpt-4o'"}  # fmt: skip
    assert mismatch["response"]["status_code"] == 400
    assert mismatch["response"]["body"]["error"] == {
        "message": "the record asks for model 'gpt-4o'", "type": "invalid_request_error",
        "param": None, "code": "model_mismatch"}  # fmt: skip
    assert failed["response"]["status_code"] == 500
    assert failed["response"]["body"]["error"]["type"] == "server_error"
    assert len({x["id"] for x in lines}) == 3
    assert all(x["id"].startswith("batch_req_") for x in lines)
    # our own formats keep our error records
    assert json.loads(FORMATS["jsonl"].encode_errors(errors[:1], JobInfo("j", "m", 0))) == {
        "record_id": None, "source_file": "in.jsonl", "source_line": 3, "code": "invalid_json",
        "message": "not valid JSON: x"}  # fmt: skip


def test_a_record_must_name_a_served_model():
    from hyperbatch.schemas.formats import check_model

    named = parse("openai", line(openai_chat("a", "hi", model="smol-2")))
    assert named.model == "smol-2"
    assert check_model(named, ("smol", "smol-2")) is named  # its output carries "smol-2"
    wrong = check_model(named, ("smol",))
    assert isinstance(wrong, RecordError)
    assert (wrong.code, wrong.record_id) == (ErrorCode.MODEL_MISMATCH, "a")
    assert "'smol-2'" in wrong.message
    assert "'smol'" in wrong.message
    assert "model_mismatch: ignore" in wrong.message
    ignored = check_model(named, ("smol",), "ignore")
    assert isinstance(ignored, Parsed)
    assert ignored.model is None  # the job's name, not its own
    unnamed = parse("openai", line(openai_chat("b", "hi")))
    assert check_model(unnamed, ("smol",)) is unnamed
    res = Result("a", text="x", finish_reason=FinishReason.STOP, usage=Usage(1, 1, 0))
    out = json.loads(FORMATS["openai"].encode_results([(named, res)], JobInfo("j", "smol", 0)))
    assert out["response"]["body"]["model"] == "smol-2"


def test_job_spec_served_model_names():
    from hyperbatch.jobs.spec import SpecError, validate

    base = {"name": "names", "task": "chat", "input": "x", "input_format": "openai",
            "output": "/tmp/x", "engine": "fake"}  # fmt: skip

    def names(**kw):
        return validate({**base, **kw}, check_resources=False).served_model_names

    assert names(model="smollm2-135m-instruct") == ("smollm2-135m-instruct",)
    assert names(model="/models/Llama-3.1-8B/") == ("Llama-3.1-8B",)
    assert names(model="gs://b/m/SmolLM2.Q4_1.gguf") == ("SmolLM2.Q4_1",)
    assert names(model="/m", served_model_name=["a", "b"]) == ("a", "b")
    assert names(model="/m", served_model_name="gpt-4o-mini") == ("gpt-4o-mini",)
    with pytest.raises(SpecError, match="model_mismatch: must be error or ignore"):
        names(model="/m", model_mismatch="warn")
    with pytest.raises(SpecError, match="served_model_name: must be a model name"):
        names(model="/m", served_model_name=[])


SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def json_schema_format(**spec):
    return {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA, **spec}}


def test_response_format_becomes_the_requests_constraint():
    from hyperbatch.schemas.records import Guided, GuidedKind

    p = parse(
        "openai", line(openai_chat("s", "hi", response_format=json_schema_format(strict=True)))
    )
    assert p.request.sampling.guided == Guided.json_schema(SCHEMA)
    assert p.request.sampling.guided.schema == SCHEMA
    p = parse("openai", line(openai_chat("o", "hi", response_format={"type": "json_object"})))
    assert p.request.sampling.guided == Guided(GuidedKind.JSON_OBJECT, "{}")
    p = parse("openai", line(openai_chat("t", "hi", response_format={"type": "text"})))
    assert p.request.sampling.guided is None
    cmpl = {"custom_id": "c", "method": "POST", "url": "/v1/completions",
            "body": {"prompt": "x", "response_format": {"type": "json_object"}}}  # fmt: skip
    assert parse("openai", line(cmpl), TaskKind.COMPLETION).request.sampling.guided is not None
    for bad, words in [
        ({"type": "xml"}, "must be text, json_object or json_schema"),
        ({"type": "json_schema"}, '"json_schema": {"name", "schema"'),
        (json_schema_format(name="has space"), "name must be 1-64 letters"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "schema must be the JSON Schema"),
        (json_schema_format(strict="yes"), "strict must be true or false"),
    ]:
        err = parse("openai", line(openai_chat("b", "hi", response_format=bad)))
        assert isinstance(err, RecordError), bad
        assert err.code == ErrorCode.INVALID_GUIDED
        assert words in err.message


def test_jsonl_guided_and_n():
    from hyperbatch.schemas.records import Guided

    rec = {"id": "j", "prompt": "hi", "guided": {"json_schema": SCHEMA}, "sampling": {"n": 2}}
    p = parse("jsonl", line(rec))
    assert p.request.sampling.guided == Guided.json_schema(SCHEMA)
    assert p.request.sampling.n == 2
    for bad, code in [
        ({"id": "j", "prompt": "x", "guided": {"regex": "a", "choice": ["a"]}}, ErrorCode.INVALID_GUIDED),
        ({"id": "j", "prompt": "x", "guided": {"yaml": "a"}}, ErrorCode.INVALID_GUIDED),
        ({"id": "j", "prompt": "x", "guided": {"choice": []}}, ErrorCode.INVALID_GUIDED),
        ({"id": "j", "prompt": "x", "guided": {"regex": "a"}, "sampling": {"guided": {"regex": "b"}}},
         ErrorCode.INVALID_GUIDED),
        ({"id": "j", "prompt": "x", "sampling": {"n": 200}}, ErrorCode.INVALID_SAMPLING),
    ]:  # fmt: skip
        err = parse("jsonl", line(bad))
        assert isinstance(err, RecordError), bad
        assert err.code == code, bad
    # the job's default constraint (spec sampling.guided) applies unless a record gives its own
    from hyperbatch.schemas.records import sampling_from_dict

    defaults = sampling_from_dict({"guided": {"choice": ["a", "b"]}})
    plain = FORMATS["jsonl"].parse(line({"id": "d", "prompt": "x"}), LOC, TaskKind.CHAT, defaults)
    assert plain.request.sampling.guided.choices == ["a", "b"]


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                    "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time"}},
]  # fmt: skip


def test_tools_are_served_as_forced_calls_or_refused_precisely():
    from hyperbatch.schemas.formats import ForcedToolCall

    named = parse("openai", line(openai_chat("n", "weather?", tools=TOOLS, tool_choice={
        "type": "function", "function": {"name": "get_weather"}})))  # fmt: skip
    assert named.tool_call == ForcedToolCall("get_weather")
    assert named.request.sampling.guided.schema == TOOLS[0]["function"]["parameters"]
    assert named.request.tools == tuple(TOOLS)  # handed to the chat template
    required = parse("openai", line(openai_chat("r", "?", tools=TOOLS, tool_choice="required",
                                                parallel_tool_calls=False)))  # fmt: skip
    assert required.tool_call == ForcedToolCall(None)
    any_of = required.request.sampling.guided.schema["anyOf"]
    assert [c["properties"]["name"] for c in any_of] == [
        {"const": "get_weather"},
        {"const": "get_time"},
    ]
    assert any_of[1]["properties"]["arguments"] == {"type": "object", "properties": {}}
    none = parse("openai", line(openai_chat("x", "?", tools=TOOLS, tool_choice="none")))
    assert (none.tool_call, none.request.sampling.guided) == (None, None)
    assert none.request.tools == tuple(TOOLS)

    auto = parse("openai", line(openai_chat("a", "?", tools=TOOLS)))
    assert auto.code == ErrorCode.UNSUPPORTED_TOOLS
    assert 'tool_choice "required"' in auto.message
    assert "auto" in auto.message
    for body, code, words in [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         ErrorCode.INVALID_RECORD, "not one of the tools"),
        ({"tool_choice": "required"}, ErrorCode.INVALID_RECORD, "tool_choice needs tools"),
        ({"tools": [{"type": "code_interpreter"}]}, ErrorCode.INVALID_RECORD, "tools[0] must be"),
        ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
         ErrorCode.INVALID_GUIDED, "give one of them"),
    ]:  # fmt: skip
        err = parse("openai", line(openai_chat("e", "?", **body)))
        assert isinstance(err, RecordError), body
        assert err.code == code, body
        assert words in err.message
    cmpl = {"custom_id": "c", "method": "POST", "url": "/v1/completions",
            "body": {"prompt": "x", "tools": TOOLS}}  # fmt: skip
    assert "tools are a chat feature" in parse("openai", line(cmpl), TaskKind.COMPLETION).message


def test_forced_tool_calls_and_n_choices_in_the_output():
    from hyperbatch.schemas.records import Choice, TokenLogprob

    named = parse("openai", line(openai_chat("n", "weather?", tools=TOOLS, tool_choice={
        "type": "function", "function": {"name": "get_weather"}})))  # fmt: skip
    required = parse("openai", line(openai_chat("r", "?", tools=TOOLS, tool_choice="required")))
    job = JobInfo("j", "m", 0)

    def body(parsed, res):
        return json.loads(FORMATS["openai"].encode_results([(parsed, res)], job))["response"][
            "body"
        ]

    done = Result("n", text='{"city":"Paris"}', finish_reason=FinishReason.STOP, usage=Usage(5, 6))
    [choice] = body(named, done)["choices"]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert choice["message"]["content"] is None
    assert call["type"] == "function"
    assert call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    cut = Result("n", text='{"ci', finish_reason=FinishReason.LENGTH, usage=Usage(5, 2))
    [choice] = body(named, cut)["choices"]
    assert (choice["finish_reason"], choice["message"]["content"]) == ("length", '{"ci')
    assert "tool_calls" not in choice["message"]
    picked = Result("r", text='{"name":"get_time","arguments":{}}', finish_reason=FinishReason.STOP,
                    usage=Usage(5, 9))  # fmt: skip
    [choice] = body(required, picked)["choices"]
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "get_time", "arguments": "{}"}

    lps = (TokenLogprob("\ufffd", -0.5, (("\ufffd", -0.5),), b"\xe6", (b"\xe6",)),)
    three = Result(
        "c", text="a", finish_reason=FinishReason.STOP, usage=Usage(4, 6, 2),
        choices=(Choice(0, "a", FinishReason.STOP, (1,), lps), Choice(1, "bb", FinishReason.LENGTH),
                 Choice(2, "c", FinishReason.STOP)),
    )  # fmt: skip
    chat_req = parse("openai", line(openai_chat("c", "hi", n=3, logprobs=True, top_logprobs=1)))
    b = body(chat_req, three)
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in b["choices"]] == [
        (0, "a", "stop"), (1, "bb", "length"), (2, "c", "stop")]  # fmt: skip
    assert b["choices"][0]["logprobs"]["content"][0]["bytes"] == [0xE6]  # the token's own bytes
    assert b["choices"][1]["logprobs"] is None
    assert b["usage"]["completion_tokens"] == 6
    record = json.loads(FORMATS["jsonl"].encode_results([(chat_req, three)], job))
    assert [c["text"] for c in record["choices"]] == ["a", "bb", "c"]
    assert record["text"] == "a"
    back = avro.from_avro_bytes(FORMATS["avro"].encode_results([(chat_req, three)], job))
    assert [c["finish_reason"] for c in back[0]["choices"]] == ["stop", "length", "stop"]
