"""Vertex AI text-embedding batch lines: ``{"content", "task_type"?, "title"?}`` per line, and
Vertex-style output lines back::

    {"instance": {...the input line...},
     "predictions": [{"embeddings": {"values": [...],
                                     "statistics": {"token_count": n, "truncated": false}}}],
     "status": ""}

Vertex lines carry no id: a line's id is ``<file name>:<line>`` (``"id"`` may be added to a line
to name it; it is then checked for duplicates like any other format's id). ``task_type`` is
checked against Vertex's list; the models served here embed queries and documents alike, so it
does not change the vector. ``title`` is refused: these models have no title input (put it in
``content``).
"""

from __future__ import annotations

import json
import posixpath
from typing import Any, ClassVar

from hyperbatch.schemas.formats.base import (
    JsonLinesFormat,
    Location,
    Parsed,
    RecordError,
    embedding_request,
)
from hyperbatch.schemas.records import ErrorCode, RequestError, SamplingParams, TaskKind

TASK_TYPES = (
    "RETRIEVAL_QUERY",
    "RETRIEVAL_DOCUMENT",
    "SEMANTIC_SIMILARITY",
    "CLASSIFICATION",
    "CLUSTERING",
    "QUESTION_ANSWERING",
    "FACT_VERIFICATION",
    "CODE_RETRIEVAL_QUERY",
)


class VertexEmbedding(JsonLinesFormat):
    """Vertex AI text-embedding batch lines (``task: embedding`` only)."""

    name = "vertex"
    id_key = "id"
    KEYS: ClassVar[frozenset[str]] = frozenset({"content", "task_type", "title", "id"})

    @staticmethod
    def line_id(location: Location) -> str:
        return f"{posixpath.basename(location.file)}:{location.line}"

    def parse(
        self, raw: Any, location: Location, task: TaskKind, defaults: SamplingParams
    ) -> Parsed | RecordError:
        try:
            obj = self._load(raw)
        except (UnicodeDecodeError, ValueError):
            return super().parse(raw, location, task, defaults)  # the shared error records
        if isinstance(obj, dict) and obj.get("id") is None:
            rid = self.line_id(location)
            try:
                return self._parse_obj(rid, obj, location, task, defaults)
            except RequestError as e:
                return RecordError(rid, location, e.code, e.message)
        return super().parse(raw, location, task, defaults)

    def _parse_obj(self, rid, obj, location, task, defaults) -> Parsed:
        if task is not TaskKind.EMBEDDING:
            raise RequestError(ErrorCode.INVALID_RECORD, "vertex lines are embedding requests")
        unknown = sorted(set(obj) - self.KEYS)
        if unknown:
            raise RequestError(
                ErrorCode.INVALID_RECORD,
                f"unknown field(s) {', '.join(unknown)}; a Vertex embedding line is "
                '{"content", "task_type"?}',
            )
        if "title" in obj:
            raise RequestError(
                ErrorCode.INVALID_RECORD,
                "title: this model has no title input; put the title in content",
            )
        task_type = obj.get("task_type")
        if task_type is not None and task_type not in TASK_TYPES:
            raise RequestError(
                ErrorCode.INVALID_RECORD,
                f"task_type {task_type!r} is not one of {', '.join(TASK_TYPES)}",
            )
        if "content" not in obj:
            raise RequestError(ErrorCode.EMPTY_INPUT, "the line has no content")
        if not isinstance(obj["content"], str):
            raise RequestError(ErrorCode.INVALID_RECORD, "content must be a string")
        req = embedding_request(rid, obj["content"], what="content")
        return Parsed(req, location, echo=obj)

    def encode_results(self, items, job) -> bytes:
        lines = []
        for parsed, res in items:
            assert res.embeddings is not None
            predictions = [
                {
                    "embeddings": {
                        "values": list(vector),
                        "statistics": {
                            "token_count": res.token_counts[i] if res.token_counts else 0,
                            "truncated": bool(res.truncated[i]) if res.truncated else False,
                        },
                    }
                }
                for i, vector in enumerate(res.embeddings)
            ]
            line = {"instance": dict(parsed.echo or {}), "predictions": predictions, "status": ""}
            lines.append(json.dumps(line, ensure_ascii=False))
        return ("\n".join(lines) + "\n").encode() if lines else b""
