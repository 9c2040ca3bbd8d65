"""Image parts in records: OpenAI ``image_url`` parts, Vertex AI Gemini batch lines (in and out)
and the listing of ``input_format: images`` -- parsed into requests whose images the pipeline
reads later, each problem an error with a stable code."""

from __future__ import annotations

import base64
import json

import pytest

from hyperbatch import storage
from hyperbatch.jobs import spec as job_spec
from hyperbatch.runners import pipeline
from hyperbatch.schemas.formats import FORMATS, JobInfo, Location, Parsed, RecordError
from hyperbatch.schemas.formats.images import fixed_prefix, listing_lines
from hyperbatch.schemas.records import (
    FinishReason,
    GuidedKind,
    Result,
    SamplingParams,
    TaskKind,
    Usage,
)
from tests.helpers import images as pics
from tests.records import jsonl
from tests.runners.test_pipeline import outputs

LOC = Location("gs://b/in/batch.jsonl", 7)


def parse(fmt: str, line: dict, task: TaskKind = TaskKind.CHAT) -> Parsed | RecordError:
    return FORMATS[fmt].parse(json.dumps(line).encode(), LOC, task, SamplingParams())


def gemini(contents, **request) -> dict:
    return {"request": {"contents": contents, **request}}


def test_openai_image_url_parts():
    line = {"custom_id": "c1", "method": "POST", "url": "/v1/chat/completions", "body": {
        "messages": [{"role": "system", "content": "Label photos."},
                     {"role": "user", "content": [
                         {"type": "text", "text": "Which is red?"},
                         {"type": "image_url", "image_url": {"url": "gs://b/a.jpg", "detail": "high"}},
                         {"type": "image_url", "image_url": "data:image/png;base64,AAAA"}]}]}}  # fmt: skip
    p = parse("openai", line)
    assert isinstance(p, Parsed)
    assert p.request.messages[0] == {"role": "system", "content": "Label photos."}
    assert p.request.messages[1]["content"] == (
        {"type": "text", "text": "Which is red?"}, {"type": "image", "image": 0},
        {"type": "image", "image": 1})  # fmt: skip
    assert [i.uri for i in p.request.input_images] == ["gs://b/a.jpg", "data:image/png;base64,AAAA"]
    assert p.request.input_images[1].mime_type == "image/png"

    def with_url(url, **extra):
        body = {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url, **extra}}]}]}  # fmt: skip
        return parse("openai", {**line, "body": body})

    assert with_url("https://x/y.png").code == "image_not_allowed"
    assert with_url("s3://bucket/y.png").code == "image_not_allowed"
    assert with_url("gs://b/y.png", detail="ultra").code == "invalid_record"
    assert with_url("").code == "invalid_record"
    text_only = parse("openai", {**line, "body": {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}})  # fmt: skip
    assert text_only.request.messages[0]["content"] == "ab"  # text parts stay plain text
    assert text_only.request.input_images == ()


def test_jsonl_messages_take_image_parts_too():
    p = parse("jsonl", {"id": "j", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "/data/x.png"}}]}]})  # fmt: skip
    assert [i.uri for i in p.request.input_images] == ["/data/x.png"]


def test_gemini_lines_become_chat_requests():
    inline = base64.b64encode(pics.encode(pics.solid(2, 2, (1, 2, 3)))).decode()
    line = gemini(
        [{"role": "user", "parts": [{"text": "What is in "},
                                    {"fileData": {"fileUri": "gs://b/cat.jpg", "mimeType": "image/jpeg"}},
                                    {"text": " and "},
                                    {"inline_data": {"mime_type": "image/png", "data": inline}}]},
         {"role": "model", "parts": [{"text": "A cat and a dot."}]},
         {"role": "user", "parts": {"text": "Which is bigger?"}}],
        systemInstruction={"parts": [{"text": "Answer in one word."}]},
        generation_config={"temperature": 0.2, "topP": 0.9, "topK": 5, "maxOutputTokens": 7,
                           "seed": 3, "stopSequences": ["."], "candidateCount": 2},
        safetySettings=[{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}],
    )  # fmt: skip
    p = parse("vertex", line)
    assert isinstance(p, Parsed), p
    req = p.request
    assert req.record_id == "batch.jsonl:7"
    assert [m["role"] for m in req.messages] == ["system", "user", "assistant", "user"]
    assert req.messages[0]["content"] == "Answer in one word."
    assert req.messages[1]["content"] == (
        {"type": "text", "text": "What is in "}, {"type": "image", "image": 0},
        {"type": "text", "text": " and "}, {"type": "image", "image": 1})  # fmt: skip
    assert req.messages[3]["content"] == "Which is bigger?"
    assert req.input_images[0].uri == "gs://b/cat.jpg"
    assert req.input_images[0].mime_type == "image/jpeg"
    assert req.input_images[1].uri == f"data:image/png;base64,{inline}"
    sp = req.sampling
    assert (sp.temperature, sp.top_p, sp.top_k, sp.max_tokens, sp.seed, sp.stop, sp.n) == (
        0.2, 0.9, 5, 7, 3, (".",), 2)  # fmt: skip
    assert p.echo == line["request"]


def test_gemini_structured_output():
    schema = {"type": "OBJECT", "properties": {"label": {"type": "STRING", "nullable": True}},
              "required": ["label"]}  # fmt: skip
    p = parse("vertex", gemini([{"role": "user", "parts": [{"text": "json please"}]}],
                               generationConfig={"responseMimeType": "application/json",
                                                 "responseSchema": schema}))  # fmt: skip
    g = p.request.sampling.guided
    assert g.kind is GuidedKind.JSON_SCHEMA
    assert g.schema == {"type": "object", "required": ["label"],
                        "properties": {"label": {"type": ["string", "null"]}}}  # fmt: skip
    plain = parse("vertex", gemini([{"parts": [{"text": "x"}]}],
                                   generationConfig={"responseMimeType": "application/json"}))  # fmt: skip
    assert plain.request.sampling.guided.kind is GuidedKind.JSON_OBJECT


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ({"contents": []}, "invalid_record"),  # not wrapped in "request"
        (gemini([]), "empty_messages"),
        (gemini([{"role": "user", "parts": [{"text": "  "}]}]), "empty_messages"),
        (gemini([{"role": "robot", "parts": [{"text": "x"}]}]), "invalid_record"),
        (gemini([{"parts": [{"fileData": {"fileUri": "gs://b/v.mp4", "mimeType": "video/mp4"}}]}]),
         "unsupported_image_type"),
        (gemini([{"parts": [{"fileData": {"fileUri": "https://x/a.png", "mimeType": "image/png"}}]}]),
         "image_not_allowed"),
        (gemini([{"parts": [{"inlineData": {"mimeType": "image/png"}}]}]), "invalid_image"),
        (gemini([{"parts": [{"functionCall": {}}]}]), "invalid_record"),
        (gemini([{"parts": [{"text": "x"}]}], tools=[{}]), "unsupported_tools"),
        (gemini([{"parts": [{"text": "x"}]}], generationConfig={"temperature": -1}),
         "invalid_sampling"),
        (gemini([{"parts": [{"text": "x"}]}], generationConfig={"thinkingConfig": {}}),
         "invalid_sampling"),
        (gemini([{"parts": [{"text": "x"}]}], generationConfig={"responseSchema": {}}),
         "invalid_guided"),
        (gemini([{"parts": [{"text": "x"}]}], surprise=1), "invalid_record"),
    ],
)  # fmt: skip
def test_bad_gemini_lines_are_errors_with_codes(line, code):
    got = parse("vertex", line)
    assert isinstance(got, RecordError)
    assert (got.code, got.record_id) == (code, "batch.jsonl:7")


def test_gemini_output_lines():
    fmt = FORMATS["vertex"]
    p = parse("vertex", gemini([{"role": "user", "parts": [{"text": "hi"}]}]))
    res = Result("batch.jsonl:7", text="hello", finish_reason=FinishReason.LENGTH,
                 usage=Usage(prompt_tokens=4, completion_tokens=1, image_tokens=0))  # fmt: skip
    (line,) = [
        json.loads(x) for x in fmt.encode_results([(p, res)], JobInfo("j", "m", 0)).splitlines()
    ]
    assert line == {
        "request": {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
        "response": {
            "candidates": [{"index": 0, "content": {"role": "model", "parts": [{"text": "hello"}]},
                            "finishReason": "MAX_TOKENS"}],
            "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 1,
                              "totalTokenCount": 5,
                              "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 4}]},
            "modelVersion": "m",
        },
        "status": "",
    }  # fmt: skip


def test_vertex_serves_chat_and_embedding_but_not_completion(tmp_path):
    base = {"name": "vx", "input": "x.jsonl", "input_format": "vertex", "output": str(tmp_path),
            "model": "fake", "engine": "fake"}  # fmt: skip
    job_spec.validate({**base, "task": "chat"}, check_resources=False)
    job_spec.validate({**base, "task": "embedding"}, check_resources=False)
    with pytest.raises(job_spec.SpecError, match="vertex lines are Gemini chat"):
        job_spec.validate({**base, "task": "completion"}, check_resources=False)


def test_a_gemini_batch_file_through_the_pipeline(tmp_path, gcs_bucket):
    red = pics.encode(pics.solid(8, 4, (255, 0, 0)), "PNG")
    storage.write_bytes(f"{gcs_bucket}/img/red.png", red)
    lines = [
        gemini([{"role": "user", "parts": [{"text": "say two words"}]}]),
        gemini([{"role": "user", "parts": [
            {"fileData": {"fileUri": f"{gcs_bucket}/img/red.png", "mimeType": "image/png"}},
            {"text": "what colour"}]}]),
        gemini([{"role": "user", "parts": [
            {"fileData": {"fileUri": f"{gcs_bucket}/img/red.png", "mimeType": "image/jpeg"}},
            {"text": "declared wrong"}]}]),
        gemini([{"role": "user", "parts": [
            {"fileData": {"fileUri": f"{gcs_bucket}/img/none.png", "mimeType": "image/png"}}]}]),
        gemini([{"role": "user", "parts": [{"text": "call it"}]}], tools=[{"x": 1}]),
        gemini([{"role": "user", "parts": [{"text": "a forbidden word"}]}]),
    ]  # fmt: skip
    (tmp_path / "req.jsonl").write_bytes(jsonl(lines) + b"not json\n")
    spec = job_spec.validate({"name": "gem", "task": "chat", "input": str(tmp_path / "req.jsonl"),
                              "input_format": "vertex", "output": str(tmp_path / "out"),
                              "model": "fake", "engine": "fake", "max_error_rate": 1.0,
                              "engine_options": {"reject_word": "forbidden"}})  # fmt: skip
    m = pipeline.run(spec)
    results, errors = outputs(spec.job_dir())
    assert [r["response"]["candidates"][0]["content"]["parts"][0]["text"] for r in results] == [
        "words two say", "colour what <image:8x4:#ff0000>"]  # fmt: skip
    assert [r["request"] for r in results] == [lines[0]["request"], lines[1]["request"]]
    assert results[1]["response"]["usageMetadata"]["promptTokenCount"] == 4
    assert results[1]["response"]["usageMetadata"]["promptTokensDetails"] == [
        {"modality": "TEXT", "tokenCount": 3}, {"modality": "IMAGE", "tokenCount": 1}]  # fmt: skip
    # error lines in Vertex's shape: the input request (null for an unreadable line) and a
    # status saying why -- whether the line was refused when read, by the image reader, or by
    # the engine -- with our error record's fields beside them
    by_line = {e["source_line"]: e for e in errors}
    assert {line: (e["record_id"], e["code"]) for line, e in by_line.items()} == {
        3: ("req.jsonl:3", "invalid_image"), 4: ("req.jsonl:4", "image_not_found"),
        5: ("req.jsonl:5", "unsupported_tools"), 6: ("req.jsonl:6", "engine_rejected"),
        7: (None, "invalid_json")}  # fmt: skip
    for line in (3, 4, 5, 6):
        assert by_line[line]["request"] == lines[line - 1]["request"]
        assert by_line[line]["status"].startswith(by_line[line]["code"] + ": ")
    assert by_line[7]["request"] is None
    assert by_line[7]["status"].startswith("invalid_json: ")
    assert "forbidden" in by_line[6]["status"]
    assert "tools" in by_line[5]["status"]
    assert m["input_images"] == 1


def test_the_listing_of_an_image_glob():
    files = [storage.FileInfo("gs://b/photos/2024/a.jpg", 10, 1),
             storage.FileInfo("gs://b/photos/b.png", 20, 2)]  # fmt: skip
    assert fixed_prefix("gs://b/photos/**.jpg") == "gs://b/photos/"
    assert fixed_prefix("gs://b/photos/img-*.png") == "gs://b/photos/"
    assert fixed_prefix("/data/one.png") == "/data/"
    lines = [json.loads(x) for x in listing_lines("gs://b/photos/**", files).splitlines()]
    assert lines == [{"id": "2024/a.jpg", "uri": "gs://b/photos/2024/a.jpg", "size": 10},
                     {"id": "b.png", "uri": "gs://b/photos/b.png", "size": 20}]  # fmt: skip
