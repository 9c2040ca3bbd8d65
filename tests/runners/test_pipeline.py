"""The Beam pipeline on the DirectRunner (FnApiRunner) with the fake engine: plumbing end to end.

Every test checks content: which ids came back, which errors with which codes and locations,
and that the manifest's counts reconcile with the files actually written.
"""

from __future__ import annotations

import json

import pytest

from hyperbatch import storage
from hyperbatch.engines.fake import FakeEngine
from hyperbatch.jobs import spec as job_spec
from hyperbatch.jobs.layout import JobFolder
from hyperbatch.runners import pipeline
from hyperbatch.runners.options import local_options
from hyperbatch.runners.progress import PROGRESS
from hyperbatch.schemas import avro
from tests.helpers.faults import crash_on_call, heal
from tests.records import jsonl, openai_chat, read_jsonl


def make_spec(input_glob: str, output: str, **fields):
    data = {"name": "tj", "task": "chat", "input": input_glob, "input_format": "openai",
            "output": output, "model": "fake", "engine": "fake", "records_per_shard": 3,
            **fields}  # fmt: skip
    return job_spec.validate(data)


def outputs(job_dir: str, suffix: str = ".jsonl") -> tuple[list[dict], list[dict]]:
    results, errors = [], []
    for f in storage.glob(storage.join(job_dir, "results", f"*{suffix}")):
        data = storage.read_bytes(f.path)
        results += avro.from_avro_bytes(data) if suffix == ".avro" else read_jsonl(data)
    for f in storage.glob(storage.join(job_dir, "errors", "*.jsonl")):
        errors += read_jsonl(storage.read_bytes(f.path))
    return results, errors


def error_places(errors: list[dict]) -> list[tuple[str, str]]:
    """(custom_id -- or, for a line without one, where it is, which its message starts with --,
    code) of OpenAI batch error lines, sorted."""
    return sorted(
        (e["custom_id"] or e["error"]["message"].split(": ")[0], e["error"]["code"]) for e in errors
    )


BAD_LINES = [
    ("not json at all", "invalid_json"),
    (json.dumps([1, 2, 3]), "invalid_record"),
    (json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": {}}), "missing_id"),
    (json.dumps({**openai_chat("e-url", "x"), "url": "/v1/embeddings"}), "unsupported_url"),
    (json.dumps({**openai_chat("e-empty", "x"), "body": {"messages": []}}), "empty_messages"),
    (json.dumps(openai_chat("e-temp", "x", temperature=-3)), "invalid_sampling"),
    (json.dumps(openai_chat("e-long", " ".join(["w"] * 600))), "prompt_too_long"),
    (json.dumps(openai_chat("e-reject", "please forbidden now")), "engine_rejected"),
    (json.dumps(openai_chat("ok-1", "dup")), "duplicate_id"),  # repeats ok-1 from file a
]


def test_every_record_ends_as_one_result_or_one_error(tmp_path):
    good_a = [openai_chat(f"ok-{i}", f"word{i} alpha beta", max_tokens=2) for i in range(1, 8)]
    lines_a = (
        [json.dumps(r) for r in good_a[:4]]
        + [BAD_LINES[0][0], ""]
        + [json.dumps(r) for r in good_a[4:]]
    )
    lines_b = [line for line, _ in BAD_LINES[1:]] + [json.dumps(openai_chat("ok-b", "last one"))]
    (tmp_path / "a.jsonl").write_bytes(jsonl(lines_a))
    (tmp_path / "b.jsonl").write_bytes(jsonl(lines_b))
    spec = make_spec(str(tmp_path / "*.jsonl"), str(tmp_path / "out"),
                     engine_options={"reject_word": "forbidden"}, max_error_rate=1.0)  # fmt: skip

    m = pipeline.run(spec)
    results, errors = outputs(spec.job_dir())

    assert sorted(r["custom_id"] for r in results) == sorted(
        [f"ok-{i}" for i in range(1, 8)] + ["ok-b"]
    )
    # the fake engine reverses the words of the prompt, cut at max_tokens
    by_id = {r["custom_id"]: r for r in results}
    assert by_id["ok-3"]["response"]["body"]["choices"][0]["message"]["content"] == "beta alpha"
    assert by_id["ok-b"]["response"]["body"]["choices"][0]["message"]["content"] == "one last"

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    expected = {f"{a}:5": "invalid_json", f"{b}:1": "invalid_record", f"{b}:2": "missing_id"}
    for raw, code in BAD_LINES[3:]:
        expected[json.loads(raw)["custom_id"]] = code
    assert error_places(errors) == sorted(expected.items())
    assert all(e["error"]["message"] for e in errors)
    dup = next(e for e in errors if e["error"]["code"] == "duplicate_id")
    assert dup["custom_id"] == "ok-1"
    assert f"{a}:1" in dup["error"]["message"]

    n_records = len([ln for ln in lines_a + lines_b if ln.strip()])
    assert m["records_in"] == n_records == len(results) + len(errors)
    assert (m["results"], m["errors"]) == (len(results), len(errors))
    assert sum(m["errors_by_code"].values()) == len(errors)
    assert m["status"] == "SUCCEEDED"
    assert m["completion_tokens"] == sum(
        r["response"]["body"]["usage"]["completion_tokens"] for r in results
    )
    assert len(m["shards"]) == 3 + 3  # a: 8 records in shards of 3 -> 3; b: 9 -> 3
    assert sum(s["records_in"] for s in m["shards"]) == n_records


def test_resume_after_a_crash_skips_committed_shards_and_duplicates_nothing(tmp_path, monkeypatch):
    records = [openai_chat(f"r{i:02d}", f"a b c {i}") for i in range(12)]
    (tmp_path / "in.jsonl").write_bytes(jsonl(records))
    spec = make_spec(str(tmp_path / "in.jsonl"), str(tmp_path / "out"))
    crash_on_call(monkeypatch, FakeEngine, "generate", 3, "accelerator fell over")
    one_at_a_time = local_options()  # one bundle thread: exactly two shards commit first
    with pytest.raises(Exception, match="accelerator fell over"):
        pipeline.run(spec, options=one_at_a_time)
    markers = storage.glob(JobFolder(spec.job_dir()).commits_prefix + "*.json")
    assert len(markers) == 2  # two shards committed before the crash
    before = {f.path: f.generation for f in markers}

    heal(monkeypatch, FakeEngine, "generate")
    m = pipeline.run(spec)  # several shards in flight, as by default
    results, errors = outputs(spec.job_dir())
    assert sorted(r["custom_id"] for r in results) == [f"r{i:02d}" for i in range(12)]
    assert errors == []
    assert m["records_in"] == m["results"] == 12
    assert PROGRESS.snapshot().shards_resumed == 2
    after = {
        f.path: f.generation for f in storage.glob(storage.join(spec.job_dir(), "_commits", "*"))
    }
    assert all(after[p] == g for p, g in before.items())  # committed shards were not redone
    assert len(after) == 4


def test_a_rerun_of_a_finished_job_changes_nothing(tmp_path):
    (tmp_path / "in.jsonl").write_bytes(jsonl([openai_chat(f"r{i}", "x y") for i in range(5)]))
    spec = make_spec(str(tmp_path / "in.jsonl"), str(tmp_path / "out"))
    first = pipeline.run(spec)
    second = pipeline.run(spec)
    assert outputs(spec.job_dir())[0].__len__() == 5
    assert second["records_in"] == first["records_in"] == 5
    assert second["accelerator_seconds"] == first["accelerator_seconds"]


def test_changed_input_is_refused_on_resume_and_an_identical_copy_is_not(tmp_path):
    import os
    import shutil

    path = tmp_path / "in.jsonl"
    path.write_bytes(jsonl([openai_chat("a", "x"), openai_chat("b", "y")]))
    spec = make_spec(str(path), str(tmp_path / "out"))
    first = pipeline.run(spec)
    # the same bytes, a new file (another mtime): the same input, so the job resumes
    shutil.copy(path, tmp_path / "copy.jsonl")
    os.replace(tmp_path / "copy.jsonl", path)
    os.utime(path, (1, 1))
    again = pipeline.run(spec)
    assert (again["records_in"], again["results"]) == (first["records_in"], first["results"])
    # other bytes of the same size: refused
    path.write_bytes(jsonl([openai_chat("a", "x"), openai_chat("b", "z")]))
    with pytest.raises(Exception, match="is not what shard part-00000-00000 of this job"):
        pipeline.run(spec)


def test_changed_input_on_gcs_is_refused_and_an_identical_rewrite_is_not(gcs_bucket):
    """The same check on Cloud Storage (fake-gcs-server): a rewrite of the same bytes is a new
    object (new generation, new update time) and resumes; other bytes of the same size do not."""
    path = f"{gcs_bucket}/in/records.jsonl"
    storage.write_bytes(path, jsonl([openai_chat("a", "x"), openai_chat("b", "y")]))
    spec = make_spec(path, f"{gcs_bucket}/jobs")
    first = pipeline.run(spec)
    before = storage.stat(path)
    storage.write_bytes(path, storage.read_bytes(path))  # an identical copy, uploaded again
    assert storage.stat(path) != before  # another object as far as metadata goes
    again = pipeline.run(spec)
    assert (again["records_in"], again["results"]) == (first["records_in"], first["results"])
    storage.write_bytes(path, jsonl([openai_chat("a", "x"), openai_chat("b", "z")]))
    assert storage.stat(path).size == before.size
    with pytest.raises(Exception, match="is not what shard part-00000-00000 of this job"):
        pipeline.run(spec)


def test_job_id_reused_with_another_spec_is_refused(tmp_path):
    (tmp_path / "in.jsonl").write_bytes(jsonl([openai_chat("a", "x")]))
    spec = make_spec(str(tmp_path / "in.jsonl"), str(tmp_path / "out"))
    pipeline.run(spec, job_id="shared-id")
    other = make_spec(str(tmp_path / "in.jsonl"), str(tmp_path / "out"), batch_size=4)
    with pytest.raises(job_spec.JobIdConflict, match="already used by another spec"):
        pipeline.run(other, job_id="shared-id")


def test_gcs_input_and_output_through_the_emulator(gcs_bucket):
    storage.write_bytes(f"{gcs_bucket}/in/part-1.jsonl", jsonl([openai_chat(f"g{i}", f"p q {i}") for i in range(4)]))  # fmt: skip
    storage.write_bytes(f"{gcs_bucket}/in/part-2.jsonl", jsonl(["oops", openai_chat("g9", "r s")]))
    spec = make_spec(f"{gcs_bucket}/in/*.jsonl", f"{gcs_bucket}/jobs")
    m = pipeline.run(spec)
    results, errors = outputs(spec.job_dir())
    assert sorted(r["custom_id"] for r in results) == ["g0", "g1", "g2", "g3", "g9"]
    assert error_places(errors) == [(f"{gcs_bucket}/in/part-2.jsonl:1", "invalid_json")]
    assert m["records_in"] == 6
    assert (
        json.loads(storage.read_bytes(f"{spec.job_dir()}/manifest.json"))["job_id"] == m["job_id"]
    )
    assert (
        avro.from_avro_bytes(storage.read_bytes(f"{spec.job_dir()}/manifest.avro"))[0]["results"]
        == 5
    )


def test_avro_input_gives_avro_results(tmp_path):
    recs = [{"record_id": f"v{i}", "prompt": f"one two {i}", "messages": None, "sampling": None,
             "metadata": {"row": str(i)}} for i in range(7)]  # fmt: skip
    recs.append(
        {"record_id": "v0", "prompt": "dup", "messages": None, "sampling": None, "metadata": None}
    )
    (tmp_path / "in.avro").write_bytes(avro.to_avro_bytes("prompt_record", recs))
    spec = make_spec(str(tmp_path / "in.avro"), str(tmp_path / "out"), input_format="avro")
    m = pipeline.run(spec)
    results, errors = outputs(spec.job_dir(), ".avro")
    assert sorted(r["id"] for r in results) == [f"v{i}" for i in range(7)]
    assert {r["id"]: r["metadata"]["row"] for r in results}["v3"] == "3"
    assert [(e["record_id"], e["source_line"], e["code"]) for e in errors] == [
        ("v0", 8, "duplicate_id")
    ]
    assert m["records_in"] == 8


def test_empty_input_and_error_rate_threshold(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"\n\n")
    m = pipeline.run(make_spec(str(tmp_path / "empty.jsonl"), str(tmp_path / "out")))
    assert (m["records_in"], m["status"], m["cost_usd"]) == (0, "SUCCEEDED", 0.0)
    (tmp_path / "bad.jsonl").write_bytes(jsonl(["x", "y", openai_chat("ok", "fine")]))
    m = pipeline.run(
        make_spec(str(tmp_path / "bad.jsonl"), str(tmp_path / "out"), max_error_rate=0.5)
    )
    assert (m["errors"], m["status"]) == (2, "FAILED")


def test_multi_process_beam_gives_the_same_results(tmp_path):
    """Beam's local runner with 2 worker processes (as Dataflow runs DoFns, away from the
    process that built the pipeline): the same results, errors and counts as in-process, so
    nothing relies on a module global of one process."""
    from hyperbatch.runners.options import local_options

    records = [openai_chat(f"m-{i}", f"w{i} a b c", max_tokens=3) for i in range(10)]
    lines = [json.dumps(r) for r in records] + ["broken", json.dumps(records[2])]
    (tmp_path / "in.jsonl").write_bytes(jsonl(lines))
    runs = {}
    for workers in (1, 2):
        spec = make_spec(str(tmp_path / "in.jsonl"), str(tmp_path / f"out-{workers}"))
        m = pipeline.run(spec, options=local_options(workers))
        # the DoFns ran in this process only with 1 worker: this process's counters tell
        assert PROGRESS.snapshot().records == (12 if workers == 1 else 0)
        results, errors = outputs(spec.job_dir())
        runs[workers] = (
            sorted((r["custom_id"], r["response"]["body"]["choices"][0]["message"]["content"])
                   for r in results),
            error_places(errors),
            (m["records_in"], m["results"], m["errors"], m["completion_tokens"]),
            len(m["shards"]),
        )  # fmt: skip
    assert runs[2] == runs[1]
    assert runs[1][2] == (12, 10, 2, 30)
    assert runs[1][1] == [(f"{tmp_path / 'in.jsonl'}:11", "invalid_json"), ("m-2", "duplicate_id")]
