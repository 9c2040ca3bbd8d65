"""Input/output record formats: OpenAI Batch JSONL, our JSONL, Avro records, Vertex AI
Gemini and text-embedding lines, and image globs.

A format plug-in knows how to (1) cut a file into units with byte offsets so the planner can
shard it without holding it, (2) read one record's id cheaply for the duplicate check,
(3) turn a raw record into an engine ``Request`` or a ``RecordError`` with a reason, and
(4) encode results in the format users expect back (OpenAI Batch output lines for ``openai``,
our result record for ``jsonl`` / ``avro``). Errors are always written as JSONL error records.

Each format lives in its own module (``openai``, ``jsonl``, ``avro``, ``vertex``); ``base`` holds what they
share. ``FORMATS`` maps a spec's ``input_format`` to its plug-in.
"""

from __future__ import annotations

from hyperbatch.schemas.formats.avro import PromptAvro
from hyperbatch.schemas.formats.base import (
    ForcedToolCall,
    InputFormat,
    JobInfo,
    Location,
    Parsed,
    RecordError,
    Unit,
    check_model,
    encode_errors,
    validate_messages,
)
from hyperbatch.schemas.formats.images import ImageListing
from hyperbatch.schemas.formats.jsonl import PromptJsonl
from hyperbatch.schemas.formats.openai import OpenAIBatch
from hyperbatch.schemas.formats.vertex import VertexBatch, VertexEmbedding

FORMATS: dict[str, InputFormat] = {
    f.name: f for f in (OpenAIBatch(), PromptJsonl(), PromptAvro(), VertexBatch(), ImageListing())
}

__all__ = [
    "FORMATS",
    "ForcedToolCall",
    "ImageListing",
    "InputFormat",
    "JobInfo",
    "Location",
    "OpenAIBatch",
    "Parsed",
    "PromptAvro",
    "PromptJsonl",
    "RecordError",
    "Unit",
    "VertexBatch",
    "VertexEmbedding",
    "check_model",
    "encode_errors",
    "validate_messages",
]
