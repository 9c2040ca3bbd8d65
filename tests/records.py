"""Builders of input records for tests (OpenAI Batch lines, our JSONL, Avro files)."""

from __future__ import annotations

import json
from typing import Any


def openai_chat(custom_id: str, content: str, **body: Any) -> dict[str, Any]:
    """A chat line; it names no model unless ``model=`` is given (a job checks the name)."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"messages": [{"role": "user", "content": content}], **body},
    }


def jsonl(records: list[Any]) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records).encode()


def read_jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]
