"""Our JSONL: ``{"id", "prompt" | "messages", "sampling"?, "guided"?, "metadata"?}`` per line;
results are ``schemas/result.avsc`` records as JSON lines."""

from __future__ import annotations

import json
from typing import ClassVar

from hyperbatch.schemas.formats.base import (
    IMAGE_FIELDS,
    JsonLinesFormat,
    Parsed,
    build_request,
    embedding_request,
    image_request,
    metadata_of,
    result_record,
)
from hyperbatch.schemas.records import ErrorCode, RequestError, TaskKind


class PromptJsonl(JsonLinesFormat):
    """Our JSONL: ``{"id", "prompt" | "messages", "sampling"?, "guided"?, "metadata"?}`` per
    line (``guided``: the output constraint, as ``sampling.guided``); for embedding jobs
    ``{"id", "text", "metadata"?}``; for image jobs ``{"id", "prompt", "negative_prompt"?,
    "width"?, "height"?, "steps"?, "guidance_scale"?, "seed"?, "n"?, "scheduler"?,
    "metadata"?}``."""

    name = "jsonl"
    id_key = "id"
    KEYS: ClassVar[frozenset[str]] = frozenset(
        {"id", "prompt", "messages", "sampling", "guided", "metadata"}
    )
    EMBEDDING_KEYS: ClassVar[frozenset[str]] = frozenset({"id", "text", "metadata"})

    def _parse_obj(self, rid, obj, location, task, defaults) -> Parsed:
        if task is TaskKind.EMBEDDING:
            unknown = sorted(set(obj) - self.EMBEDDING_KEYS)
            if unknown or "text" not in obj:
                raise RequestError(
                    ErrorCode.INVALID_RECORD,
                    f"an embedding record is {{{', '.join(sorted(self.EMBEDDING_KEYS))}}}"
                    + (f"; unknown field(s) {', '.join(unknown)}" if unknown else "; no text"),
                )
            if not isinstance(obj["text"], str):
                raise RequestError(ErrorCode.INVALID_RECORD, "text must be a string")
            req = embedding_request(rid, obj["text"], what="text")
            return Parsed(req, location, metadata_of(obj.get("metadata")))
        if task is TaskKind.IMAGE:
            keys = {"id", "prompt", "metadata", *IMAGE_FIELDS}
            unknown = sorted(set(obj) - keys)
            if unknown:
                raise RequestError(
                    ErrorCode.INVALID_RECORD,
                    f"unknown field(s) {', '.join(unknown)}; an image record has "
                    f"{', '.join(sorted(keys))}",
                )
            req = image_request(rid, obj.get("prompt"), {k: obj.get(k) for k in IMAGE_FIELDS})
            return Parsed(req, location, metadata_of(obj.get("metadata")))
        unknown = sorted(set(obj) - self.KEYS)
        if unknown:
            raise RequestError(
                ErrorCode.INVALID_RECORD,
                f"unknown field(s) {', '.join(unknown)}; a record has {', '.join(sorted(self.KEYS))}",
            )
        if ("prompt" in obj) == ("messages" in obj):
            raise RequestError(ErrorCode.INVALID_RECORD, "give exactly one of prompt or messages")
        sampling = obj.get("sampling") or {}
        if not isinstance(sampling, dict):
            raise RequestError(ErrorCode.INVALID_SAMPLING, "sampling must be an object")
        if obj.get("guided") is not None:
            if "guided" in sampling:
                raise RequestError(
                    ErrorCode.INVALID_GUIDED, "give guided or sampling.guided, not both"
                )
            sampling = {**sampling, "guided": obj["guided"]}
        req = build_request(rid, task, defaults, sampling, obj.get("prompt"), obj.get("messages"))
        return Parsed(req, location, metadata_of(obj.get("metadata")))

    def encode_results(self, items, job) -> bytes:
        lines = [json.dumps(result_record(p, r, job), ensure_ascii=False) for p, r in items]
        return ("\n".join(lines) + "\n").encode() if lines else b""
