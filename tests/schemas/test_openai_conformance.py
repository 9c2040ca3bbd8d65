"""Every line a mixed OpenAI batch job writes -- chat and completions, JSON mode and JSON schemas,
forced tool calls, n > 1, logprobs, and errors of every lane -- validates against OpenAI's own
batch output and response schemas (``openai_api``, from OpenAI's API reference), so drift from
OpenAI's format is caught. The jobs run through the Beam pipeline on our JAX engine with a tiny
random checkpoint (what is generated is noise; its shape, and every constraint, are not)."""

from __future__ import annotations

import json

import pytest

from tests.optional import require

require("jax", "the JAX engine")
require("llguidance", "structured outputs")
jsonschema = require("jsonschema", "validating the output against OpenAI's schemas")

from hyperbatch import storage
from hyperbatch.jobs import spec as job_spec
from hyperbatch.runners import pipeline
from tests.records import jsonl, openai_chat, read_jsonl
from tests.schemas import openai_api

SERVED = "tiny-smol"
COLOUR = {"type": "object", "properties": {"colour": {"enum": ["red", "green"]},
          "ok": {"type": "boolean"}}, "required": ["colour", "ok"], "additionalProperties": False}  # fmt: skip
UNIT = {"type": "object", "properties": {"unit": {"enum": ["c", "f"]}}, "required": ["unit"],
        "additionalProperties": False}  # fmt: skip
TOOLS = [
    {"type": "function", "function": {"name": "weather", "parameters": UNIT}},
    {"type": "function", "function": {"name": "time", "parameters": {
        "type": "object", "properties": {"zone": {"enum": ["utc", "cet"]}}, "required": ["zone"],
        "additionalProperties": False}}},
]  # fmt: skip


def completion(cid: str, prompt: str, **body) -> dict:
    return {"custom_id": cid, "method": "POST", "url": "/v1/completions",
            "body": {"prompt": prompt, **body}}  # fmt: skip


CHAT_LINES = [
    openai_chat("plain", "Hello there", model=SERVED, max_tokens=6),
    openai_chat("json-mode", "JSON please", response_format={"type": "json_object"},
                max_tokens=48, seed=1),
    openai_chat("json-schema", "A colour", max_tokens=40, seed=2, response_format={
        "type": "json_schema", "json_schema": {"name": "colour", "schema": COLOUR,
                                               "strict": True}}),
    openai_chat("n-logprobs", "Name a colour", n=3, logprobs=True, top_logprobs=2,
                max_tokens=5, temperature=1.0, seed=3),
    openai_chat("tool-named", "Weather?", tools=TOOLS, max_tokens=30,
                tool_choice={"type": "function", "function": {"name": "weather"}}),
    openai_chat("tool-required", "Anything", tools=TOOLS, tool_choice="required",
                max_tokens=40, temperature=1.0, seed=4),
    openai_chat("tool-none", "No tools", tools=TOOLS, tool_choice="none", max_tokens=4),
    openai_chat("other-model", "Hi", model="gpt-4o-mini"),
    openai_chat("tool-auto", "Weather?", tools=TOOLS),
    openai_chat("bad-schema", "x", response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "string", "format": "no-such-format"}}}),
    "{ not json",
]  # fmt: skip
COMPLETION_LINES = [
    completion("c-plain", "Once upon a time", max_tokens=5),
    completion("c-n-logprobs", "The sky is", n=2, logprobs=2, max_tokens=4, seed=5),
    completion("c-json", "{", response_format={"type": "json_object"}, max_tokens=30),
    completion("c-too-long", " ".join(["word"] * 400)),
]
EXPECTED_ERRORS = {"other-model": "model_mismatch", "tool-auto": "unsupported_tools",
                   "bad-schema": "unsupported_guided", None: "invalid_json",
                   "c-too-long": "prompt_too_long"}  # fmt: skip


def run_job(tmp_path, tiny_dir: str, task: str, lines: list) -> tuple[list, list]:
    (tmp_path / f"{task}.jsonl").write_bytes(jsonl(lines))
    spec = job_spec.validate({
        "name": f"conform-{task}", "task": task, "input": str(tmp_path / f"{task}.jsonl"),
        "input_format": "openai", "output": str(tmp_path / "out"), "model": tiny_dir,
        "engine": "jax", "batch_size": 4, "max_seq_len": 256, "served_model_name": SERVED,
        "records_per_shard": 8, "max_error_rate": 1.0,
        "engine_options": {"prefill_buckets": [16, 32, 64, 128], "decode_steps": 4,
                           "attention_block": 32},
        "sampling": {"temperature": 0.0},
    })  # fmt: skip
    m = pipeline.run(spec)
    job = spec.job_dir()
    results = [r for f in storage.glob(f"{job}/results/*.jsonl")
               for r in read_jsonl(storage.read_bytes(f.path))]  # fmt: skip
    errors = [e for f in storage.glob(f"{job}/errors/*.jsonl")
              for e in read_jsonl(storage.read_bytes(f.path))]  # fmt: skip
    assert m["records_in"] == len(lines) == len(results) + len(errors)
    return results, errors


def check_line(line: dict, url: str) -> None:
    """One output line against OpenAI's schemas: the batch line, then its body."""
    if line["custom_id"] is None:
        # OpenAI validates a whole input file before running it; we serve the rest of the file
        # and write a line we could not read with custom_id null (no id to echo) and no response
        assert line["response"] is None
        line = {**line, "custom_id": "unreadable"}
    jsonschema.validate(line, openai_api.BATCH_REQUEST_OUTPUT)
    response = line["response"]
    if response is None:
        assert line["error"] is not None
    elif response["status_code"] == 200:
        assert line["error"] is None
        jsonschema.validate(response["body"], openai_api.BODIES[url])
    else:
        assert response["status_code"] in (400, 500)
        jsonschema.validate(response["body"], openai_api.ERROR_RESPONSE)
        assert line["error"]["code"] == response["body"]["error"]["code"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    from tests.helpers.tiny_models import tiny_llama_dir

    return tiny_llama_dir(str(tmp_path_factory.mktemp("tiny-smollm2")), "smollm2")


@pytest.fixture(scope="module")
def chat_job(tmp_path_factory, tiny_dir):
    return run_job(tmp_path_factory.mktemp("chat"), tiny_dir, "chat", CHAT_LINES)


@pytest.fixture(scope="module")
def completion_job(tmp_path_factory, tiny_dir):
    return run_job(tmp_path_factory.mktemp("completion"), tiny_dir, "completion", COMPLETION_LINES)


def test_every_line_validates_against_openais_schemas(chat_job, completion_job):
    for (results, errors), url in ((chat_job, "/v1/chat/completions"),
                                   (completion_job, "/v1/completions")):  # fmt: skip
        for line in results + errors:
            check_line(line, url)
    codes = {e["custom_id"]: e["error"]["code"] for e in chat_job[1] + completion_job[1]}
    assert codes == EXPECTED_ERRORS


def test_what_the_lines_say(chat_job, completion_job):
    bodies = {r["custom_id"]: r["response"]["body"] for r in chat_job[0] + completion_job[0]}
    assert {b["model"] for b in bodies.values()} == {SERVED}
    schema = bodies["json-schema"]["choices"][0]
    assert schema["finish_reason"] == "stop"
    jsonschema.validate(json.loads(schema["message"]["content"]), COLOUR)
    mode = bodies["json-mode"]["choices"][0]
    assert mode["message"]["content"].startswith("{")
    if mode["finish_reason"] == "stop":
        assert isinstance(json.loads(mode["message"]["content"]), dict)
    many = bodies["n-logprobs"]["choices"]
    assert [c["index"] for c in many] == [0, 1, 2]
    for c in many:
        tokens = c["logprobs"]["content"]
        assert len(tokens) == 5
        assert all(len(t["top_logprobs"]) == 2 for t in tokens)
        assert "".join(bytes(t["bytes"]).decode("utf-8", "replace") for t in tokens) == c["message"]["content"]  # fmt: skip
    assert bodies["n-logprobs"]["usage"]["completion_tokens"] == 15
    named = bodies["tool-named"]["choices"][0]
    assert named["finish_reason"] == "tool_calls"
    call = named["message"]["tool_calls"][0]["function"]
    assert call["name"] == "weather"
    jsonschema.validate(json.loads(call["arguments"]), UNIT)
    required = bodies["tool-required"]["choices"][0]["message"]["tool_calls"][0]["function"]
    params = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    jsonschema.validate(json.loads(required["arguments"]), params[required["name"]])
    assert "tool_calls" not in bodies["tool-none"]["choices"][0]["message"]
    completions = bodies["c-n-logprobs"]["choices"]
    assert [len(c["logprobs"]["tokens"]) for c in completions] == [4, 4]
    assert all(len(top) == 2 for c in completions for top in c["logprobs"]["top_logprobs"])
