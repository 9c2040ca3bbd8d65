"""Load the Avro schemas shipped in this package (parsed once) and read/write Avro bytes."""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

import fastavro

SCHEMA_NAMES = (
    "prompt_record",
    "result",
    "error",
    "cost_manifest",
    "job_request",
    "job_event",
    "image_request",
    "embedding_record",
    "embedding_result",
    "image_result",
)


@functools.cache
def schema(name: str) -> dict[str, Any]:
    """The parsed schema ``schemas/<name>.avsc``."""
    if name not in SCHEMA_NAMES:
        raise KeyError(f"no schema {name!r}; known: {', '.join(SCHEMA_NAMES)}")
    text = (
        resources.files("hyperbatch.schemas").joinpath(f"{name}.avsc").read_text(encoding="utf-8")
    )
    return fastavro.parse_schema(json.loads(text))


def to_avro_bytes(name: str, records: Iterable[Mapping[str, Any]], codec: str = "deflate") -> bytes:
    buf = io.BytesIO()
    fastavro.writer(buf, schema(name), list(records), codec=codec, validator=True)
    return buf.getvalue()


def from_avro_bytes(data: bytes) -> list[dict[str, Any]]:
    return list(fastavro.reader(io.BytesIO(data)))


def encode_one(name: str, record: Mapping[str, Any]) -> bytes:
    """Schemaless binary encoding of one record (e.g. a Pub/Sub message body)."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema(name), dict(record))
    return buf.getvalue()


def decode_one(name: str, data: bytes) -> dict[str, Any]:
    return fastavro.schemaless_reader(io.BytesIO(data), schema(name))
