"""What a trigger message asks for: a job, nothing (ignored), or something impossible (rejected).

A Pub/Sub message is one of:

* **A job request.** Its data is the job spec itself as JSON or YAML text
  (``gcloud pubsub topics publish T --message="$(cat job.yaml)"``), or a JobRequest
  (``schemas/job_request.avsc``) as JSON: ``{"spec": {...}}``, ``{"spec_json": "..."}`` or
  ``{"spec_url": "gs://..."}`` with optional ``job_id``, ``submitted_by`` and ``overrides``, or a
  JobRequest in Avro: binary when the attribute ``googclient_schemaencoding`` is ``BINARY`` (a
  topic with that schema) or ``content-type`` is ``application/avro``, Avro JSON when the
  encoding is ``JSON``. The attributes ``job_id``, ``submitted_by`` and ``spec_url`` may stand
  in for the body's fields (both at once must agree). Paths in a spec sent inline must be
  absolute or gs:// URLs; in a spec file they may be relative to the file.
* **A Cloud Storage notification** (attribute ``eventType``; ``payloadFormat`` JSON_API_V1 or
  NONE). An ``OBJECT_FINALIZE`` of a ``.yaml``/``.yml``/``.json`` object under a watched prefix
  submits that object, read at the notified generation, as a spec file; its custom metadata
  ``submitted-by`` names the submitter. Any other notification is ignored.

The job id is the request's ``job_id`` (an idempotency key) if it has one; otherwise
``<name>-<hash>`` of the message id, or of ``gs://bucket/object#generation`` for a
notification, so a message delivered again always means the same job.

``Rejected`` is raised for a message that can never become a job (not a request, an invalid
spec, a bad job id); the reason says what to fix.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from hyperbatch import storage
from hyperbatch.jobs import layout
from hyperbatch.jobs.policy import AccessPolicy
from hyperbatch.jobs.submit import JobRequest
from hyperbatch.retry import CLOUD_RETRY

SPEC_SUFFIXES = (".yaml", ".yml", ".json")
REQUEST_KEYS = frozenset({"job_id", "spec", "spec_json", "spec_url", "submitted_by", "overrides"})
_SPEC_SOURCES = ("spec", "spec_json", "spec_url")


class Rejected(Exception):
    """A message that can never become a job; ``reason`` says why and what to fix."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


@dataclasses.dataclass(frozen=True)
class Ignored:
    """A message that asks for nothing (another event type, an object outside the watch)."""

    reason: str


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One delivery of a Pub/Sub message, from a streaming pull or a push envelope."""

    message_id: str
    data: bytes
    attributes: Mapping[str, str]
    publish_time: str | None = None
    subscription: str | None = None
    delivery_attempt: int | None = None

    @property
    def key(self) -> str:
        """A name for this message that is safe in paths (rejection records)."""
        return "m-" + _digest(f"pubsub:{self.message_id}", 16)

    @classmethod
    def from_push(cls, envelope: Mapping[str, Any]) -> Delivery:
        """From a push request body: {"message": {...}, "subscription": ...}."""
        message = envelope.get("message")
        if not isinstance(message, Mapping):
            raise ValueError("a push envelope has a 'message' object")
        message_id = message.get("messageId") or message.get("message_id")
        if not message_id:
            raise ValueError("the pushed message has no messageId")
        try:
            data = base64.b64decode(message.get("data") or "", validate=True)
        except ValueError as e:
            raise ValueError(f"the pushed message's data is not base64: {e}") from e
        attempt = envelope.get("deliveryAttempt")
        return cls(
            message_id=str(message_id),
            data=data,
            attributes=dict(message.get("attributes") or {}),
            publish_time=message.get("publishTime") or message.get("publish_time"),
            subscription=envelope.get("subscription"),
            delivery_attempt=int(attempt) if attempt is not None else None,
        )

    def describe(self) -> dict[str, Any]:
        """For rejection records and the dead-letter topic: the message, its data truncated."""
        return {
            "message_id": self.message_id,
            "publish_time": self.publish_time,
            "subscription": self.subscription,
            "delivery_attempt": self.delivery_attempt,
            "attributes": dict(self.attributes),
            "data_base64": base64.b64encode(self.data[:65536]).decode(),
            "data_bytes": len(self.data),
        }


def _digest(text: str, n: int = 10) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def normalize_watch_prefix(prefix: str) -> str:
    """``gs://bucket/specs`` -> ``gs://bucket/specs/`` (a prefix matches whole folder names)."""
    if not storage.is_gcs(prefix):
        raise ValueError(f"--watch {prefix!r}: Cloud Storage notifications name gs:// objects")
    bucket, name = storage.split_gcs(prefix)
    return f"gs://{bucket}/{name.strip('/') + '/' if name.strip('/') else ''}"


def interpret(
    delivery: Delivery,
    watch: Sequence[str] = (),
    exclude: Sequence[str] = (),
    policy: AccessPolicy | None = None,
) -> JobRequest | Ignored:
    """The job a message asks for; Ignored if none; raises Rejected if it can never be one.

    ``watch``: gs:// prefixes whose spec files are submitted when notified; ``exclude``:
    prefixes never submitted from (the job store itself, whose files are JSON too);
    ``policy``: where the job may read and write -- checked before anything is read.
    """
    if "eventType" in delivery.attributes and "bucketId" in delivery.attributes:
        return _notification(delivery, watch, exclude, policy)
    return _job_request(delivery, policy)


# --------------------------------------------------------------------------- job requests


def _job_request(delivery: Delivery, policy: AccessPolicy | None) -> JobRequest:
    from hyperbatch.jobs import spec as job_spec
    from hyperbatch.jobs.ids import check_job_id

    body = _decode_body(delivery)
    for name in ("job_id", "submitted_by", "spec_url"):
        given = delivery.attributes.get(name)
        if given is None:
            continue
        if body.get(name) not in (None, given):
            raise Rejected(f"{name} is {given!r} in the attributes but {body[name]!r} in the body")
        body[name] = given
    sources = [k for k in _SPEC_SOURCES if body.get(k) not in (None, "")]
    if len(sources) != 1:
        raise Rejected(
            "a job request needs exactly one of spec, spec_json and spec_url "
            f"(got {', '.join(sources) or 'none'}); or send the spec itself as the message"
        )
    overrides = body.get("overrides") or {}
    if not isinstance(overrides, Mapping):
        raise Rejected("overrides must map dotted keys to values, e.g. {'batch_size': '16'}")
    source = f"message {delivery.message_id}"
    if body.get("spec_url"):
        url = str(body["spec_url"])
        if not storage.is_gcs(url):
            raise Rejected(f"spec_url {url!r}: give a gs:// URL of a spec file")
        if policy is not None and not policy.allows(url):
            raise Rejected(f"spec_url {url!r} is outside what this trigger may read "
                           f"({policy.describe()})")  # fmt: skip
        raw, base = _read_spec_object(url, None), url.rsplit("/", 1)[0]
        source = url
    elif body.get("spec_json") is not None:
        raw, base = _parse_spec_text(str(body["spec_json"]), source), None
    else:
        raw, base = body["spec"], None
        if not isinstance(raw, Mapping):
            raise Rejected("spec must be a mapping of spec keys to values")
    spec = _build_spec(raw, overrides, base, source, policy)
    job_id = body.get("job_id")
    if job_id:
        try:
            check_job_id(str(job_id))
        except job_spec.SpecError as e:
            raise Rejected(str(e)) from e
    else:
        job_id = f"{spec.name}-{_digest(f'pubsub:{delivery.message_id}')}"
    return JobRequest(
        job_id=str(job_id),
        spec=spec,
        submitted_by=body.get("submitted_by"),
        submission={
            "via": "pubsub",
            "message_id": delivery.message_id,
            "publish_time": delivery.publish_time,
            "subscription": delivery.subscription,
            "idempotency_key": bool(body.get("job_id")),
            "spec_url": body.get("spec_url"),
        },
    )


def _decode_body(delivery: Delivery) -> dict[str, Any]:
    from hyperbatch.schemas import avro

    attrs = delivery.attributes
    encoding = (attrs.get("googclient_schemaencoding") or "").upper()
    content_type = attrs.get("content-type") or attrs.get("contentType") or ""
    if encoding == "BINARY" or content_type.startswith("application/avro"):
        try:
            return avro.decode_one("job_request", delivery.data)
        except Exception as e:
            raise Rejected(
                f"data is not an Avro JobRequest (schemas/job_request.avsc): {e!r}"
            ) from e
    if encoding == "JSON":
        import fastavro

        try:
            reader = fastavro.json_reader(
                io.StringIO(delivery.data.decode("utf-8")), avro.schema("job_request")
            )
            return dict(next(iter(reader)))
        except Exception as e:
            raise Rejected(f"data is not an Avro-JSON JobRequest: {e!r}") from e
    if not delivery.data.strip():
        return {}
    parsed = _parse_spec_text(_utf8(delivery.data), f"message {delivery.message_id}")
    if parsed.keys() & set(_SPEC_SOURCES):
        unknown = sorted(set(parsed) - REQUEST_KEYS)
        if unknown:
            raise Rejected(
                f"unknown job request key(s) {', '.join(unknown)}; allowed: "
                f"{', '.join(sorted(REQUEST_KEYS))}"
            )
        return dict(parsed)
    return {"spec": parsed}


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Rejected(
            f"data is neither UTF-8 JSON/YAML nor Avro (set the attribute "
            f"content-type=application/avro for Avro): {e}"
        ) from e


def _parse_spec_text(text: str, source: str) -> dict[str, Any]:
    try:
        parsed = json.loads(text)  # the common case, and ~50x faster than the YAML parser
    except ValueError:
        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise Rejected(f"{source}: not JSON or YAML: {e}") from e
    if not isinstance(parsed, dict):
        raise Rejected(f"{source}: expected a job spec (a mapping), got {type(parsed).__name__}")
    return parsed


# --------------------------------------------------------------------------- notifications


def _notification(
    delivery: Delivery, watch: Sequence[str], exclude: Sequence[str], policy: AccessPolicy | None
) -> JobRequest | Ignored:
    attrs = delivery.attributes
    event = attrs.get("eventType")
    url = f"gs://{attrs['bucketId']}/{attrs.get('objectId', '')}"
    if event != "OBJECT_FINALIZE":
        return Ignored(f"{event} of {url}: only OBJECT_FINALIZE submits a job")
    if not any(url.startswith(p) for p in watch):
        return Ignored(f"{url} is not under a watched prefix ({', '.join(watch) or 'none'})")
    if any(url.startswith(p) for p in exclude):
        return Ignored(f"{url} is inside the job store")
    if not url.endswith(SPEC_SUFFIXES):
        return Ignored(f"{url} is not a spec file ({', '.join(SPEC_SUFFIXES)})")
    if url.rsplit("/", 1)[-1] in layout.OWN_FILES or any(f in url for f in layout.OWN_FOLDERS):
        return Ignored(f"{url} is a file of a job folder")
    generation = attrs.get("objectGeneration")
    payload: dict[str, Any] = {}
    if attrs.get("payloadFormat") == "JSON_API_V1" and delivery.data:
        try:
            payload = json.loads(delivery.data)
        except ValueError as e:
            raise Rejected(f"notification payload is not JSON: {e}") from e
    generation = generation or payload.get("generation")
    if not generation:
        raise Rejected(f"notification for {url} has no objectGeneration")
    source = f"{url}#{generation}"
    raw = _read_spec_object(url, int(generation))
    spec = _build_spec(raw, {}, url.rsplit("/", 1)[0], source, policy)
    metadata = payload.get("metadata") or {}
    return JobRequest(
        job_id=f"{spec.name}-{_digest(f'gcs:{source}')}",
        spec=spec,
        submitted_by=metadata.get("submitted-by") or metadata.get("submitted_by"),
        submission={
            "via": "gcs",
            "object": url,
            "generation": str(generation),
            "event_time": attrs.get("eventTime"),
            "message_id": delivery.message_id,
            "publish_time": delivery.publish_time,
            "subscription": delivery.subscription,
        },
    )


@CLOUD_RETRY
def _download(url: str, generation: int | None) -> bytes | None:
    from google.api_core import exceptions

    bucket, name = storage.split_gcs(url)
    try:
        blob = storage.gcs_client().bucket(bucket).blob(name, generation=generation)
        return blob.download_as_bytes()
    except exceptions.NotFound:
        return None


def _read_spec_object(url: str, generation: int | None) -> dict[str, Any]:
    data = _download(url, generation)
    if data is None:
        at = f" at generation {generation}" if generation else ""
        raise Rejected(f"{url}{at} does not exist (deleted or overwritten since)")
    return _parse_spec_text(_utf8(data), url)


# --------------------------------------------------------------------------- the spec


def _needs_model(engine: Any) -> bool:
    from hyperbatch.engines.registry import ENGINES

    entry = ENGINES.get(engine) if isinstance(engine, str) else None
    return entry is None or entry.needs_model


def _build_spec(
    raw: Mapping[str, Any],
    overrides: Mapping[str, Any],
    base: str | None,
    source: str,
    policy: AccessPolicy | None,
) -> Any:
    """Validate a spec from a message: overrides applied, relative paths resolved or refused,
    its locations checked against the policy before any of them is looked at."""
    from hyperbatch.jobs import spec as job_spec

    try:
        extra = job_spec.parse_overrides([f"{k}={v}" for k, v in overrides.items()])
        data = job_spec.merge(raw, extra)
        problems = []
        for field in job_spec.PATH_FIELDS:
            value = data.get(field)
            if not isinstance(value, str) or not value:
                continue
            if storage.is_gcs(value) or os.path.isabs(value):
                continue
            if field == "model" and (
                value in job_spec.models_catalogue() or not _needs_model(data.get("engine", "jax"))
            ):
                continue
            if base:
                data[field] = storage.join(base, value)
            else:
                problems.append(
                    f"{field}: {value!r} is a relative path; in a spec sent in a message use an "
                    "absolute path or a gs:// URL (or send spec_url: relative paths in a spec "
                    "file are relative to the file)"
                )
        if problems:
            raise job_spec.SpecError(problems, source)
        spec = job_spec.validate(data, source=source, check_resources=False)
        if policy is not None:
            problems = policy.spec_problems(spec)
        if not problems:
            problems = job_spec.check_spec_resources(spec)
        if problems:
            raise job_spec.SpecError(problems, source)
        return spec
    except job_spec.SpecError as e:
        raise Rejected(str(e)) from e
