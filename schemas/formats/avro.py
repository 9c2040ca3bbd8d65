"""Avro files of ``schemas/prompt_record.avsc`` (``embedding_record.avsc`` for embedding jobs,
``image_request.avsc`` for image jobs); results as Avro files of ``schemas/result.avsc``
(``embedding_result.avsc``, ``image_result.avsc``)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import IO, Any

import fastavro

from hyperbatch.schemas import avro as avro_io
from hyperbatch.schemas.formats.base import (
    IMAGE_FIELDS,
    InputFormat,
    Parsed,
    RecordError,
    Unit,
    build_request,
    embedding_request,
    image_request,
    metadata_of,
    result_record,
)
from hyperbatch.schemas.records import ErrorCode, RequestError, TaskKind


class PromptAvro(InputFormat):
    """Avro files of ``schemas/prompt_record.avsc``; results as ``schemas/result.avsc``."""

    name = "avro"
    result_suffix = ".avro"
    result_content_type = "application/avro"

    def header_length(self, stream: IO[bytes]) -> int:
        for block in fastavro.block_reader(stream):
            return block.offset
        return stream.seek(0, io.SEEK_END)

    def units(self, stream: IO[bytes]) -> Iterator[Unit]:
        for block in fastavro.block_reader(stream):
            raws = list(block)
            yield Unit(block.offset, block.offset + block.size, raws, len(raws))

    def records(self, header: bytes, data: bytes) -> Iterator[tuple[int, Any]]:
        yield from enumerate(fastavro.reader(io.BytesIO(header + data)))

    def record_id(self, raw: Any) -> str | None:
        rid = raw.get("record_id") if isinstance(raw, dict) else None
        return rid if isinstance(rid, str) and rid else None

    def parse(self, raw, location, task, defaults) -> Parsed | RecordError:
        rid = self.record_id(raw)
        if rid is None:
            return RecordError(None, location, ErrorCode.MISSING_ID, "record_id is empty")
        try:
            if task is TaskKind.IMAGE:
                fields = {k: raw.get(k) for k in IMAGE_FIELDS}
                req = image_request(rid, raw.get("prompt"), fields)
                return Parsed(req, location, metadata_of(raw.get("metadata")))
            if task is TaskKind.EMBEDDING:
                if not isinstance(raw.get("text"), str):
                    raise RequestError(
                        ErrorCode.INVALID_RECORD,
                        "an embedding record needs text (schemas/embedding_record.avsc)",
                    )
                req = embedding_request(rid, raw["text"], what="text")
                return Parsed(req, location, metadata_of(raw.get("metadata")))
            sampling = {k: v for k, v in (raw.get("sampling") or {}).items() if v is not None}
            if (raw.get("prompt") is None) == (raw.get("messages") is None):
                raise RequestError(
                    ErrorCode.INVALID_RECORD, "give exactly one of prompt or messages"
                )
            req = build_request(
                rid, task, defaults, sampling, raw.get("prompt"), raw.get("messages")
            )
            return Parsed(req, location, metadata_of(raw.get("metadata")))
        except RequestError as e:
            return RecordError(rid, location, e.code, e.message)

    def encode_results(self, items, job) -> bytes:
        if not items:
            return b""
        first = items[0][1]
        name = (
            "embedding_result"
            if first.embeddings is not None
            else "image_result"
            if first.images is not None
            else "result"
        )
        return avro_io.to_avro_bytes(name, [result_record(p, r, job) for p, r in items])
