"""Reading trigger messages: job requests in every encoding, Cloud Storage notifications, poison."""

from __future__ import annotations

import base64
import io
import json

import fastavro
import pytest
import yaml

from hyperbatch import storage
from hyperbatch.jobs.triggers.messages import (
    Delivery,
    Ignored,
    Rejected,
    interpret,
    normalize_watch_prefix,
)
from hyperbatch.schemas import avro
from tests.jobs.control_plane import spec_dict, write_input


@pytest.fixture
def raw_spec(tmp_path):
    return spec_dict(write_input(str(tmp_path / "in.jsonl")), str(tmp_path / "out"), name="msg")


def delivery(data: bytes | str, message_id: str = "1001", **attributes: str) -> Delivery:
    data = data.encode() if isinstance(data, str) else data
    return Delivery(
        message_id, data, attributes, "2026-01-01T00:00:00Z", "projects/p/subscriptions/s"
    )


def test_the_spec_itself_as_json_or_yaml(raw_spec):
    as_json = interpret(delivery(json.dumps(raw_spec)))
    as_yaml = interpret(delivery(yaml.safe_dump(raw_spec)))
    assert as_json.spec == as_yaml.spec
    assert as_json.spec.to_dict()["input"] == raw_spec["input"]
    # no idempotency key: the id comes from the message id, so a redelivery is the same job
    assert as_json.job_id == as_yaml.job_id == interpret(delivery(json.dumps(raw_spec))).job_id
    assert as_json.job_id.startswith("msg-")
    assert interpret(delivery(json.dumps(raw_spec), message_id="1002")).job_id != as_json.job_id
    assert as_json.submission["via"] == "pubsub"
    assert as_json.submission["message_id"] == "1001"


def test_a_job_request_with_its_own_job_id(raw_spec):
    body = {
        "job_id": "nightly-2026-01-01",
        "spec": raw_spec,
        "submitted_by": "ann",
        "overrides": {"batch_size": "8", "sampling.max_tokens": "3"},
    }
    request = interpret(delivery(json.dumps(body), message_id="1"))
    assert request.job_id == "nightly-2026-01-01"
    assert request.submitted_by == "ann"
    assert request.spec.batch_size == 8
    assert request.spec.sampling["max_tokens"] == 3
    # re-published (a new message id) with the same key: the same job
    again = interpret(delivery(json.dumps(raw_spec), message_id="2", job_id="nightly-2026-01-01"))
    assert again.job_id == request.job_id
    # the spec as a JSON string (the schema's spec_json)
    as_text = interpret(delivery(json.dumps({"spec_json": json.dumps(raw_spec)})))
    assert as_text.spec.to_dict()["name"] == "msg"


def test_avro_binary_and_avro_json(raw_spec):
    record = {
        "job_id": "avro-job",
        "spec_json": json.dumps(raw_spec),
        "spec_url": None,
        "submitted_by": "etl",
        "overrides": {"batch_size": "4"},
    }
    binary = avro.encode_one("job_request", record)
    for attrs in ({"googclient_schemaencoding": "BINARY"}, {"content-type": "application/avro"}):
        request = interpret(delivery(binary, **attrs))
        assert (request.job_id, request.submitted_by, request.spec.batch_size) == (
            "avro-job",
            "etl",
            4,
        )
    buf = io.StringIO()
    fastavro.json_writer(buf, avro.schema("job_request"), [record])
    request = interpret(delivery(buf.getvalue(), googclient_schemaencoding="JSON"))
    assert request.job_id == "avro-job"


@pytest.mark.parametrize(
    ("data", "attrs", "reason"),
    [
        (b"\xff\xfe not text", {}, "neither UTF-8"),
        ("just a string", {}, "expected a job spec"),
        ("{not: [valid", {}, "not JSON or YAML"),
        (b"\x00\x01", {"googclient_schemaencoding": "BINARY"}, "not an Avro JobRequest"),
        (json.dumps({"spec": {}, "spec_url": "gs://b/x.yaml"}), {}, "exactly one of"),
        (json.dumps({"spec": {}, "priority": 1}), {}, "unknown job request key(s) priority"),
        ("", {}, "exactly one of"),
    ],
)
def test_what_is_not_a_request_is_rejected(data, attrs, reason):
    with pytest.raises(Rejected) as e:
        interpret(delivery(data, **attrs))
    assert reason in e.value.reason


def test_invalid_specs_and_ids_are_rejected_with_what_to_fix(raw_spec, tmp_path):
    with pytest.raises(Rejected, match="batch_size: must be between 1 and 4096"):
        interpret(delivery(json.dumps({**raw_spec, "batch_size": 0})))
    with pytest.raises(Rejected, match=r"input: 'in\.jsonl' is a relative path"):
        interpret(delivery(json.dumps({**raw_spec, "input": "in.jsonl"})))
    with pytest.raises(Rejected, match="job id 'Bad_Id'"):
        interpret(delivery(json.dumps(raw_spec), job_id="Bad_Id"))
    with pytest.raises(Rejected, match="job_id is 'a-1' in the attributes but 'b-2' in the body"):
        interpret(delivery(json.dumps({"job_id": "b-2", "spec": raw_spec}), job_id="a-1"))


def notification(
    bucket: str,
    name: str,
    generation: int,
    event: str = "OBJECT_FINALIZE",
    metadata: dict | None = None,
) -> Delivery:
    """The attributes and JSON_API_V1 payload Cloud Storage publishes."""
    payload = {
        "kind": "storage#object",
        "id": f"{bucket}/{name}/{generation}",
        "name": name,
        "bucket": bucket,
        "generation": str(generation),
        "metageneration": "1",
        "contentType": "application/yaml",
        "size": "100",
        "metadata": metadata or {},
    }
    attrs = {
        "notificationConfig": f"projects/_/buckets/{bucket}/notificationConfigs/1",
        "eventType": event,
        "payloadFormat": "JSON_API_V1",
        "bucketId": bucket,
        "objectId": name,
        "objectGeneration": str(generation),
        "eventTime": "2026-01-01T00:00:00.000000Z",
    }
    return Delivery("n-77", json.dumps(payload).encode(), attrs)


def test_a_spec_file_notification_reads_that_generation(gcs_bucket):
    bucket = storage.split_gcs(gcs_bucket)[0]
    write_input(f"{gcs_bucket}/specs/team/in.jsonl")
    spec_a = spec_dict("in.jsonl", "../out", name="dropped")  # relative to the spec file
    url = f"{gcs_bucket}/specs/team/job.yaml"
    gen_a = storage.write_bytes(url, yaml.safe_dump(spec_a).encode())
    gen_b = storage.write_bytes(url, yaml.safe_dump({**spec_a, "batch_size": 9}).encode())

    watch = [normalize_watch_prefix(f"{gcs_bucket}/specs")]
    req = interpret(
        notification(bucket, "specs/team/job.yaml", gen_b, metadata={"submitted-by": "bo"}), watch
    )
    assert req.spec.batch_size == 9
    assert req.submitted_by == "bo"
    assert req.spec.input == f"{gcs_bucket}/specs/team/in.jsonl"
    assert req.spec.output == f"{gcs_bucket}/specs/team/../out"
    assert req.submission == {
        **req.submission,
        "via": "gcs",
        "object": url,
        "generation": str(gen_b),
    }
    assert req.job_id == interpret(notification(bucket, "specs/team/job.yaml", gen_b), watch).job_id
    # fake-gcs-server keeps no old generations: the first version is gone, as in a bucket
    # without versioning; that notification can never become a job
    with pytest.raises(Rejected, match=f"at generation {gen_a} does not exist"):
        interpret(notification(bucket, "specs/team/job.yaml", gen_a), watch)


def test_notifications_that_ask_for_nothing_are_ignored(gcs_bucket):
    bucket = storage.split_gcs(gcs_bucket)[0]
    watch = [normalize_watch_prefix(f"{gcs_bucket}/specs/")]
    cases = [
        (notification(bucket, "specs/job.yaml", 5, event="OBJECT_DELETE"), "only OBJECT_FINALIZE"),
        (notification(bucket, "data/job.yaml", 5), "not under a watched prefix"),
        (notification(bucket, "specs/data.jsonl", 5), "not a spec file"),
        (notification(bucket, "specsX/job.yaml", 5), "not under a watched prefix"),
        (notification(bucket, "specs/out/j-1/manifest.json", 5), "a file of a job folder"),
        (notification(bucket, "specs/out/j-1/_commits/part-0-0.json", 5), "a file of a job folder"),
    ]
    for message, why in cases:
        outcome = interpret(message, watch)
        assert isinstance(outcome, Ignored)
        assert why in outcome.reason
    inside = interpret(
        notification(bucket, "specs/jobs/x/status.json", 5),
        watch,
        exclude=[f"{gcs_bucket}/specs/jobs/"],
    )
    assert "inside the job store" in inside.reason


def test_push_envelope():
    envelope = {
        "message": {
            "data": base64.b64encode(b"hello").decode(),
            "messageId": "42",
            "attributes": {"a": "b"},
            "publishTime": "2026-01-01T00:00:00Z",
        },
        "subscription": "projects/p/subscriptions/s",
        "deliveryAttempt": 3,
    }
    d = Delivery.from_push(envelope)
    assert (d.message_id, d.data, d.attributes, d.delivery_attempt) == (
        "42",
        b"hello",
        {"a": "b"},
        3,
    )
    with pytest.raises(ValueError, match="'message' object"):
        Delivery.from_push({"subscription": "s"})
    with pytest.raises(ValueError, match="no messageId"):
        Delivery.from_push({"message": {"data": ""}})
