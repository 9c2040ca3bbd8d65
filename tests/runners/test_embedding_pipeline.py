"""Embedding jobs through the Beam pipeline: every record ends as one result or one error, the
vector files hold exactly the results' vectors (written in the shard's commit, never twice),
the manifest counts vectors and prices tokens; one real run of all-MiniLM-L6-v2 whose vectors
equal sentence-transformers'."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from hyperbatch import storage
from hyperbatch.engines.fake import FakeEngine
from hyperbatch.jobs import spec as job_spec
from hyperbatch.jobs.layout import JobFolder
from hyperbatch.runners import pipeline
from hyperbatch.runners.options import local_options
from tests.helpers.faults import crash_on_call, heal
from tests.optional import require
from tests.records import jsonl, read_jsonl


def make_spec(input_glob: str, output: str, **fields):
    data = {"name": "emb", "task": "embedding", "input": input_glob, "input_format": "jsonl",
            "output": output, "model": "fake", "engine": "fake", "records_per_shard": 3,
            "vector_output": "parquet", **fields}  # fmt: skip
    return job_spec.validate(data)


def files(job_dir: str, folder: str, suffix: str) -> list[bytes]:
    return [storage.read_bytes(f.path) for f in storage.glob(f"{job_dir}/{folder}/*{suffix}")]


def parquet_rows(job_dir: str) -> list[dict]:
    rows = []
    for data in files(job_dir, "vectors", ".parquet"):
        rows += pq.read_table(io.BytesIO(data)).to_pylist()
    return rows


def test_every_record_ends_once_and_the_vectors_match_the_results(tmp_path):
    good = [{"id": f"d{i}", "text": f"passage number {i} " + "w " * i, "metadata": {"n": str(i)}}
            for i in range(7)]  # fmt: skip
    bad = [
        ({"id": "e-empty", "text": ""}, "empty_input"),
        ({"id": "e-type", "text": 7}, "invalid_record"),
        ({"id": "d1", "text": "again"}, "duplicate_id"),
    ]
    lines = good[:3] + [b for b, _ in bad] + good[3:]
    (tmp_path / "in.jsonl").write_bytes(jsonl(lines))
    spec = make_spec(str(tmp_path / "in.jsonl"), str(tmp_path / "out"))
    m = pipeline.run(spec)
    job_dir = spec.job_dir()

    results = [r for data in files(job_dir, "results", ".jsonl") for r in read_jsonl(data)]
    errors = [e for data in files(job_dir, "errors", ".jsonl") for e in read_jsonl(data)]
    assert sorted(r["id"] for r in results) == [f"d{i}" for i in range(7)]
    assert sorted((e["record_id"], e["code"]) for e in errors) == sorted(
        (b["id"], code) for b, code in bad
    )
    by_id = {r["id"]: r for r in results}
    # the fake engine's vector: [words, characters, distinct words, 1]
    text = good[4]["text"]
    assert by_id["d4"]["embedding"] == [
        len(text.split()), len(" ".join(text.split())), len(set(text.split())), 1.0
    ]  # fmt: skip
    rows = parquet_rows(job_dir)
    assert sorted(r["id"] for r in rows) == sorted(by_id)
    for row in rows:
        assert row["vector"] == pytest.approx(by_id[row["id"]]["embedding"])
        assert dict(row["metadata"]) == {"n": row["id"][1:]}
        assert row["token_count"] == by_id[row["id"]]["usage"]["prompt_tokens"]

    assert (m["records_in"], m["results"], m["errors"], m["embeddings"]) == (10, 7, 3, 7)
    assert m["prompt_tokens"] == sum(r["usage"]["prompt_tokens"] for r in results)
    # cost_usd is rounded to 8 decimals: the price per 1M tokens is computed before that
    assert m["usd_per_1m_tokens"] == pytest.approx(
        m["cost_usd"] / m["prompt_tokens"] * 1e6, rel=0.01
    )
    assert m["outputs"]["vectors"] == f"{job_dir}/vectors/*.parquet"


def test_vectors_are_part_of_the_commit_resume_writes_each_once(tmp_path, monkeypatch):
    docs = [{"id": f"r{i:02d}", "text": f"a b c {i}"} for i in range(12)]
    (tmp_path / "in.jsonl").write_bytes(jsonl(docs))
    spec = make_spec(
        str(tmp_path / "in.jsonl"), str(tmp_path / "out"), vector_output="vertex_vector_search"
    )
    crash_on_call(monkeypatch, FakeEngine, "generate", 3, "accelerator fell over")
    with pytest.raises(Exception, match="accelerator fell over"):
        pipeline.run(spec, options=local_options())  # one bundle at a time: two shards commit
    job_dir = spec.job_dir()
    assert len(files(job_dir, "vectors", ".json")) == 2
    heal(monkeypatch, FakeEngine, "generate")
    m = pipeline.run(spec)
    lines = [
        json.loads(x) for data in files(job_dir, "vectors", ".json") for x in data.splitlines()
    ]
    assert sorted(x["id"] for x in lines) == [d["id"] for d in docs]  # each once
    assert m["embeddings"] == 12
    assert len(JobFolder(job_dir).committed_shards()) == 4


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"vector_output": "parquet", "task": "chat", "input_format": "openai"},
         "only embedding jobs write vectors"),
        ({"vector_output": "csv"}, "vector_output"),
        ({"sampling": {"temperature": 0.5}}, "an embedding job samples nothing"),
        ({"input_format": "vertex", "task": "completion", "vector_output": "none"},
         "vertex lines are Gemini chat requests"),
    ],
)  # fmt: skip
def test_specs_that_mix_tasks_up_are_refused_before_launch(tmp_path, fields, message):
    with pytest.raises(job_spec.SpecError, match=message):
        make_spec(str(tmp_path / "in.jsonl"), str(tmp_path / "out"), **fields)


def test_catalogue_models_serve_their_own_task(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"id": "a", "text": "x"}\n')
    base = {"name": "mm", "input": str(tmp_path / "in.jsonl"), "output": str(tmp_path / "out"),
            "input_format": "jsonl", "engine": "jax"}  # fmt: skip
    with pytest.raises(job_spec.SpecError, match="for embedding use all-minilm-l6-v2"):
        job_spec.load(data={**base, "task": "embedding", "model": "smollm2-135m-instruct"})
    with pytest.raises(job_spec.SpecError, match="all-minilm-l6-v2 is a model for embedding"):
        job_spec.load(data={**base, "task": "chat", "model": "all-minilm-l6-v2"})


@pytest.mark.slow
def test_all_minilm_job_vectors_equal_sentence_transformers(tmp_path):
    """The catalogue's real embedder, end to end: OpenAI lines in (one with two inputs, one past
    the model's 256 tokens), the job's 128 dimensions applied to a base64 line, Parquet and
    OpenAI lines out; a record asking for another size than the job's index is refused."""
    require("sentence_transformers", "sentence-transformers is the reference")
    from sentence_transformers import SentenceTransformer

    from hyperbatch.engines import models

    texts = ["The cat sat on the mat.", "Paris is the capital of France.",
             "Vector search finds the nearest neighbours of a query.",
             " ".join(["retrieval"] * 400), "¿Dónde está la biblioteca?"]  # fmt: skip
    lines = [
        {"custom_id": "one", "method": "POST", "url": "/v1/embeddings",
         "body": {"input": texts[0]}},
        {"custom_id": "two", "method": "POST", "url": "/v1/embeddings",
         "body": {"input": texts[1:3]}},
        {"custom_id": "long", "method": "POST", "url": "/v1/embeddings",
         "body": {"input": texts[3]}},
        {"custom_id": "dims", "method": "POST", "url": "/v1/embeddings",
         "body": {"input": texts[4], "encoding_format": "base64"}},
        {"custom_id": "other", "method": "POST", "url": "/v1/embeddings",
         "body": {"input": "x", "dimensions": 64}},
    ]  # fmt: skip
    (tmp_path / "in.jsonl").write_bytes(jsonl(lines))
    spec = make_spec(
        str(tmp_path / "in.jsonl"), str(tmp_path / "out"), input_format="openai",
        model="all-minilm-l6-v2", engine="jax", records_per_shard=10, dimensions=128,
    )  # fmt: skip
    m = pipeline.run(spec)
    job_dir = spec.job_dir()
    reference = SentenceTransformer(models.resolve_model("all-minilm-l6-v2").path, device="cpu")
    expected = reference.encode(texts, convert_to_numpy=True)

    out = {r["custom_id"]: r["response"]["body"]
           for data in files(job_dir, "results", ".jsonl") for r in read_jsonl(data)}  # fmt: skip
    # the job's 128 dimensions: sentence-transformers' vector cut and renormalised
    cut = expected[:, :128] / np.linalg.norm(expected[:, :128], axis=1, keepdims=True)
    got = [out["one"]["data"][0]["embedding"], *(d["embedding"] for d in out["two"]["data"]),
           out["long"]["data"][0]["embedding"]]  # fmt: skip
    np.testing.assert_allclose(np.asarray(got), cut[:4], atol=1e-5)
    assert out["long"]["usage"]["prompt_tokens"] == 256  # truncated as sentence-transformers does
    import base64

    packed = np.frombuffer(base64.b64decode(out["dims"]["data"][0]["embedding"]), "<f4")
    np.testing.assert_allclose(packed, cut[4], atol=1e-5)
    [error] = [e for data in files(job_dir, "errors", ".jsonl") for e in read_jsonl(data)]
    assert (error["custom_id"], error["error"]["code"]) == ("other", "invalid_dimensions")

    rows = {(r["id"], r["index"]): r for r in parquet_rows(job_dir)}
    assert rows[("long", 0)]["truncated"] is True
    assert rows[("one", 0)]["truncated"] is False
    np.testing.assert_allclose(rows[("two", 1)]["vector"], cut[2], atol=1e-5)
    assert (m["results"], m["errors"], m["embeddings"]) == (4, 1, 5)
    assert m["usd_per_1m_tokens"] > 0
