"""The real thing: SmolLM2-135M-Instruct through the JAX engine in the Beam pipeline, with the
model, the input and the output all on gs:// (fake-gcs-server) -- the same code path as local."""

from __future__ import annotations

import json

import pytest

from hyperbatch import storage
from hyperbatch.engines.models import resolve_model
from hyperbatch.jobs import spec as job_spec
from hyperbatch.runners import pipeline
from tests.records import jsonl, openai_chat, read_jsonl

# Questions SmolLM2-135M answers correctly (transformers gives the same answers on this GGUF;
# it believes Italy's capital is "Il Coriobella", so Italy is not asked).
QUESTIONS = {
    "capital-france": ("What is the capital of France?", ["Paris"]),
    "capital-japan": ("What is the capital of Japan?", ["Tokyo"]),
    "capital-germany": ("What is the capital of Germany?", ["Berlin"]),
    "bees": ("What do bees make? Answer in one sentence.", ["honey"]),
    "python": ("Show how to reverse a string in Python.", ["[::-1]"]),
}


@pytest.mark.slow
def test_smollm2_answers_what_was_asked_through_gcs(gcs_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERBATCH_CACHE", str(tmp_path / "cache"))
    gguf = resolve_model("smollm2-135m-instruct").path
    model_url = f"{gcs_bucket}/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    storage.upload_file(gguf, model_url)
    records = [openai_chat(cid, q, max_tokens=48) for cid, (q, _) in QUESTIONS.items()]
    records.append("{ this line is not JSON")
    storage.write_bytes(f"{gcs_bucket}/in/questions.jsonl", jsonl(records))
    spec = job_spec.load(
        data={"name": "smol-e2e", "task": "chat", "input": f"{gcs_bucket}/in/*.jsonl",
              "input_format": "openai", "output": f"{gcs_bucket}/jobs", "model": model_url,
              "engine": "jax", "batch_size": 8, "max_seq_len": 256,
              "sampling": {"temperature": 0.0}},
    )  # fmt: skip

    m = pipeline.run(spec)

    results = {}
    for f in storage.glob(f"{spec.job_dir()}/results/*.jsonl"):
        for r in read_jsonl(storage.read_bytes(f.path)):
            results[r["custom_id"]] = r["response"]["body"]["choices"][0]["message"]["content"]
    assert set(results) == set(QUESTIONS)
    for cid, (_, expected) in QUESTIONS.items():
        answer = results[cid].lower()
        missing = [w for w in expected if w.lower() not in answer]
        assert not missing, f"{cid}: {results[cid]!r} lacks {missing}"
    [error] = read_jsonl(
        storage.read_bytes(storage.glob(f"{spec.job_dir()}/errors/*.jsonl")[0].path)
    )
    # an OpenAI batch error line; one without a custom_id says where the line is
    assert (error["custom_id"], error["response"], error["error"]["code"]) == (None, None, "invalid_json")  # fmt: skip
    assert error["error"]["message"].startswith(f"{gcs_bucket}/in/questions.jsonl:{len(records)}: ")
    assert (m["records_in"], m["results"], m["errors"]) == (6, 5, 1)
    assert m["completion_tokens"] > 5 * 3
    assert m["cost_usd"] > 0
    assert m["engine_compilations"] >= 1
    assert (
        json.loads(storage.read_bytes(f"{spec.job_dir()}/spec.json"))["spec"]["model"] == model_url
    )
