"""Embedding records in every format: what is parsed, what is refused (with which code), and
how vectors are written back (OpenAI embeddings bodies, our result records, Vertex lines,
Parquet and Vector Search files)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hyperbatch.schemas import avro
from hyperbatch.schemas.formats import FORMATS, JobInfo, Location, Parsed, RecordError
from hyperbatch.schemas.formats.base import MAX_EMBEDDING_INPUTS
from hyperbatch.schemas.records import ErrorCode, Result, SamplingParams, TaskKind, Usage
from hyperbatch.schemas.vectors import VECTOR_WRITERS

LOC = Location("gs://b/corpus/part-1.jsonl", 7)
JOB = JobInfo("emb-1", "all-minilm-l6-v2", 1700000000)
E = TaskKind.EMBEDDING


def parse(fmt: str, raw, task=E):
    return FORMATS[fmt].parse(raw, LOC, task, SamplingParams())


def line(obj) -> bytes:
    return json.dumps(obj).encode()


def oa(body, rid="r1", url="/v1/embeddings") -> bytes:
    return line({"custom_id": rid, "method": "POST", "url": url, "body": body})


def served(parsed: Parsed, vectors, truncated=None, counts=None) -> tuple[Parsed, Result]:
    n = len(vectors)
    res = Result(
        record_id=parsed.request.record_id,
        usage=Usage(prompt_tokens=sum(counts or [3] * n)),
        embeddings=tuple(tuple(float(x) for x in v) for v in vectors),
        truncated=tuple(truncated or [False] * n),
        token_counts=tuple(counts or [3] * n),
    )
    return parsed, res


def test_openai_input_string_or_array_each_gives_one_text():
    one = parse("openai", oa({"input": "hello world", "model": "m"}))
    many = parse(
        "openai", oa({"input": ["a b", "c"], "dimensions": 8, "encoding_format": "base64"})
    )
    assert isinstance(one, Parsed)
    assert isinstance(many, Parsed)
    assert one.request.texts == ("hello world",)
    assert one.request.kind is E
    assert one.encoding == "float"
    assert one.request.dimensions is None
    assert many.request.texts == ("a b", "c")
    assert (many.request.dimensions, many.encoding) == (8, "base64")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"input": ""}, ErrorCode.EMPTY_INPUT),
        ({"input": ["ok", "  "]}, ErrorCode.EMPTY_INPUT),
        ({"input": []}, ErrorCode.EMPTY_INPUT),
        ({}, ErrorCode.EMPTY_INPUT),
        ({"input": ["ok", 3]}, ErrorCode.INVALID_RECORD),
        ({"input": [[1, 2, 3]]}, ErrorCode.INVALID_RECORD),  # token arrays
        ({"input": {"text": "x"}}, ErrorCode.INVALID_RECORD),
        ({"input": ["x"] * (MAX_EMBEDDING_INPUTS + 1)}, ErrorCode.TOO_MANY_INPUTS),
        ({"input": "x", "dimensions": 0}, ErrorCode.INVALID_DIMENSIONS),
        ({"input": "x", "dimensions": "8"}, ErrorCode.INVALID_DIMENSIONS),
        ({"input": "x", "encoding_format": "int8"}, ErrorCode.INVALID_RECORD),
        ({"input": "x", "temperature": 0.5}, ErrorCode.INVALID_RECORD),
    ],
)
def test_openai_embedding_bodies_that_cannot_be_served(body, code):
    err = parse("openai", oa(body))
    assert isinstance(err, RecordError)
    assert (err.code, err.record_id, err.location) == (code, "r1", LOC)


def test_a_task_and_url_that_disagree_is_an_error_record_both_ways():
    chat_line = oa({"messages": [{"role": "user", "content": "x"}]}, url="/v1/chat/completions")
    assert parse("openai", chat_line).code is ErrorCode.UNSUPPORTED_URL
    assert parse("openai", oa({"input": "x"}), task=TaskKind.CHAT).code is ErrorCode.UNSUPPORTED_URL


def test_openai_output_is_an_embeddings_list_and_base64_is_little_endian_float32():
    p_float = parse("openai", oa({"input": ["a", "b"]}, rid="f"))
    p_b64 = parse("openai", oa({"input": "c", "encoding_format": "base64"}, rid="b"))
    v = [[0.25, -1.5, 3.0], [1.0, 0.0, 0.5]]
    out = FORMATS["openai"].encode_results(
        [served(p_float, v, counts=[2, 4]), served(p_b64, [[0.1, 0.2, -0.3]])], JOB
    )
    lines = [json.loads(x) for x in out.decode().splitlines()]
    assert [x["custom_id"] for x in lines] == ["f", "b"]
    body = lines[0]["response"]["body"]
    assert lines[0]["response"]["status_code"] == 200
    assert lines[0]["error"] is None
    assert body["object"] == "list"
    assert body["model"] == JOB.model
    assert body["data"] == [
        {"object": "embedding", "index": 0, "embedding": v[0]},
        {"object": "embedding", "index": 1, "embedding": v[1]},
    ]
    assert body["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    packed = lines[1]["response"]["body"]["data"][0]["embedding"]
    decoded = np.frombuffer(base64.b64decode(packed), dtype="<f4")
    np.testing.assert_array_equal(decoded, np.float32([0.1, 0.2, -0.3]))


def test_jsonl_embedding_records():
    ok = parse("jsonl", line({"id": "d1", "text": "some text", "metadata": {"lang": "en"}}))
    assert isinstance(ok, Parsed)
    assert ok.request.texts == ("some text",)
    assert ok.metadata == {"lang": "en"}
    for bad, code in [
        ({"id": "d", "text": ""}, ErrorCode.EMPTY_INPUT),
        ({"id": "d", "text": 5}, ErrorCode.INVALID_RECORD),
        ({"id": "d", "text": ["a", "b"]}, ErrorCode.INVALID_RECORD),
        ({"id": "d"}, ErrorCode.INVALID_RECORD),
        ({"id": "d", "prompt": "x"}, ErrorCode.INVALID_RECORD),
        ({"text": "x"}, ErrorCode.MISSING_ID),
    ]:
        err = parse("jsonl", line(bad))
        assert isinstance(err, RecordError), bad
        assert err.code is code, bad

    [rec] = [
        json.loads(x)
        for x in FORMATS["jsonl"]
        .encode_results([served(ok, [[0.5, 0.5]], [True], [256])], JOB)
        .decode()
        .splitlines()
    ]
    assert rec == {
        "id": "d1",
        "embedding": [0.5, 0.5],
        "usage": {"prompt_tokens": 256},
        "truncated": True,
        "model": JOB.model,
        "job_id": JOB.job_id,
        "metadata": {"lang": "en"},
    }


def test_avro_embedding_records_round_trip():
    records = [
        {"record_id": "a1", "text": "first passage", "metadata": {"src": "wiki"}},
        {"record_id": "a2", "text": "   ", "metadata": None},
    ]
    data = avro.to_avro_bytes("embedding_record", records)
    fmt = FORMATS["avro"]
    raws = [raw for _, raw in fmt.records(b"", data)]
    ok, bad = (fmt.parse(r, LOC, E, SamplingParams()) for r in raws)
    assert isinstance(ok, Parsed)
    assert ok.request.texts == ("first passage",)
    assert isinstance(bad, RecordError)
    assert bad.code is ErrorCode.EMPTY_INPUT
    [back] = avro.from_avro_bytes(fmt.encode_results([served(ok, [[1.0, 2.0]])], JOB))
    assert back["id"] == "a1"
    assert back["embedding"] == [1.0, 2.0]
    assert back["metadata"] == {"src": "wiki"}
    assert back["truncated"] is False


def test_vertex_lines_take_their_id_from_where_they_are_and_echo_the_instance():
    instance = {"content": "What is RAG?", "task_type": "RETRIEVAL_QUERY"}
    p = parse("vertex", line(instance))
    assert isinstance(p, Parsed)
    assert p.request.record_id == "part-1.jsonl:7"
    assert p.request.texts == ("What is RAG?",)
    named = parse("vertex", line({"content": "x", "id": "doc-9"}))
    assert named.request.record_id == "doc-9"
    assert FORMATS["vertex"].record_id(line(instance)) is None  # no id: no duplicate check
    assert FORMATS["vertex"].record_id(line({"content": "x", "id": "doc-9"})) == "doc-9"
    errors = []
    for bad, code in [
        ({"content": ""}, ErrorCode.EMPTY_INPUT),
        ({"task_type": "RETRIEVAL_QUERY"}, ErrorCode.EMPTY_INPUT),
        ({"content": 3}, ErrorCode.INVALID_RECORD),
        ({"content": "x", "task_type": "SEARCH"}, ErrorCode.INVALID_RECORD),
        ({"content": "x", "title": "A title"}, ErrorCode.INVALID_RECORD),
        ({"content": "x", "extra": 1}, ErrorCode.INVALID_RECORD),
    ]:
        err = parse("vertex", line(bad))
        assert isinstance(err, RecordError), bad
        assert err.code is code, bad
        assert err.record_id == "part-1.jsonl:7"
        errors.append(err)
    assert parse("vertex", b"{oops").code is ErrorCode.INVALID_JSON
    assert parse("vertex", line({"content": 3, "id": "d"})).echo == {"content": 3, "id": "d"}
    # the error lines are Vertex's: the instance and a status saying why
    emb_job = JobInfo(JOB.job_id, JOB.model, JOB.created, TaskKind.EMBEDDING)
    lines = FORMATS["vertex"].encode_errors([errors[2], parse("vertex", b"{oops")], emb_job)
    first, unreadable = (json.loads(x) for x in lines.splitlines())
    assert first == {"instance": {"content": 3}, "status": "invalid_record: content must be a string",
                     "record_id": "part-1.jsonl:7", "code": "invalid_record",
                     "source_file": LOC.file, "source_line": 7}  # fmt: skip
    assert unreadable["instance"] is None
    assert unreadable["status"].startswith("invalid_json: ")

    [out] = (
        FORMATS["vertex"]
        .encode_results([served(p, [[0.6, 0.8]], [True], [12])], JOB)
        .split(b"\n")[:1]
    )
    assert json.loads(out) == {
        "instance": instance,
        "predictions": [
            {
                "embeddings": {
                    "values": [0.6, 0.8],
                    "statistics": {"token_count": 12, "truncated": True},
                }
            }
        ],
        "status": "",
    }


def test_parquet_vectors_one_row_per_text_with_a_fixed_size_vector():
    a = parse("jsonl", line({"id": "a", "text": "x", "metadata": {"lang": "en", "src": "w"}}))
    b = parse("openai", oa({"input": ["p", "q"]}, rid="b"))
    data = VECTOR_WRITERS["parquet"].encode(
        [served(a, [[1, 2, 3]], [True], [256]), served(b, [[4, 5, 6], [7, 8, 9]], counts=[1, 2])]
    )
    table = pq.read_table(io.BytesIO(data))
    vector_type = table.schema.field("vector").type
    assert pa.types.is_fixed_size_list(vector_type)
    assert vector_type.list_size == 3
    assert vector_type.value_type == pa.float32()
    rows = table.to_pylist()
    assert [(r["id"], r["index"], r["token_count"], r["truncated"]) for r in rows] == [
        ("a", 0, 256, True),
        ("b", 0, 1, False),
        ("b", 1, 2, False),
    ]
    assert [r["vector"] for r in rows] == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert dict(rows[0]["metadata"]) == {"lang": "en", "src": "w"}
    assert rows[1]["metadata"] == []
    assert VECTOR_WRITERS["parquet"].encode([]) == b""


def test_vector_search_lines_carry_unique_ids_and_metadata_as_restricts():
    a = parse("jsonl", line({"id": "a", "text": "x", "metadata": {"lang": "en"}}))
    b = parse("openai", oa({"input": ["p", "q"]}, rid="b"))
    data = VECTOR_WRITERS["vertex_vector_search"].encode(
        [served(a, [[0.5, 0.5]]), served(b, [[1, 0], [0, 1]])]
    )
    assert [json.loads(x) for x in data.decode().splitlines()] == [
        {"id": "a", "embedding": [0.5, 0.5], "restricts": [{"namespace": "lang", "allow": ["en"]}]},
        {"id": "b#0", "embedding": [1.0, 0.0]},
        {"id": "b#1", "embedding": [0.0, 1.0]},
    ]
