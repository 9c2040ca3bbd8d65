"""OpenAI Batch API files: ``{"custom_id", "method", "url", "body"}`` per line, and OpenAI batch
output lines back (a ``chat.completion`` or ``text_completion`` body with choices and usage, or
an embeddings ``list`` body for ``/v1/embeddings``)."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from hyperbatch.schemas.formats.base import (
    JsonLinesFormat,
    Parsed,
    build_request,
    embedding_request,
    id_hash,
)
from hyperbatch.schemas.records import ErrorCode, RequestError, Result, TaskKind, TokenLogprob


class OpenAIBatch(JsonLinesFormat):
    """OpenAI Batch API files: ``{"custom_id", "method", "url", "body"}`` per line."""

    name = "openai"
    id_key = "custom_id"
    URLS: ClassVar[dict[str, TaskKind]] = {
        "/v1/chat/completions": TaskKind.CHAT,
        "/v1/completions": TaskKind.COMPLETION,
        "/v1/embeddings": TaskKind.EMBEDDING,
    }
    EMBEDDING_KEYS: ClassVar[frozenset[str]] = frozenset(
        {"input", "model", "encoding_format", "dimensions", "user"}
    )
    ENCODINGS = ("float", "base64")
    # body fields that map onto our sampling parameters
    SAMPLING_KEYS: ClassVar[dict[str, str]] = {
        "max_tokens": "max_tokens",
        "max_completion_tokens": "max_tokens",
        "temperature": "temperature",
        "top_p": "top_p",
        "top_k": "top_k",
        "seed": "seed",
        "stop": "stop",
        "presence_penalty": "presence_penalty",
        "frequency_penalty": "frequency_penalty",
    }
    # body fields accepted and ignored: they do not change what is generated
    IGNORED: ClassVar[frozenset[str]] = frozenset(
        {"model", "user", "metadata", "store", "stream", "n", "service_tier",
         "logprobs", "top_logprobs"}  # the last two are read by _logprobs
    )  # fmt: skip

    def _parse_obj(self, rid, obj, location, task, defaults) -> Parsed:
        method = obj.get("method", "POST")
        if method != "POST":
            raise RequestError(ErrorCode.UNSUPPORTED_METHOD, f"method must be POST, got {method!r}")
        url = obj.get("url")
        kind = self.URLS.get(url) if isinstance(url, str) else None
        if kind is None:
            raise RequestError(
                ErrorCode.UNSUPPORTED_URL,
                f"url {url!r} is not supported; use one of {', '.join(self.URLS)}",
            )
        if kind is not task:
            raise RequestError(
                ErrorCode.UNSUPPORTED_URL,
                f"url {url} asks for a {kind} request but this job's task is {task}",
            )
        body = obj.get("body")
        if not isinstance(body, dict):
            raise RequestError(ErrorCode.INVALID_RECORD, "body must be a JSON object")
        if kind is TaskKind.EMBEDDING:
            return self._embedding(rid, body, location)
        if body.get("n", 1) != 1:
            raise RequestError(ErrorCode.INVALID_RECORD, "only n=1 is supported")
        if body.get("stream", False):
            raise RequestError(ErrorCode.INVALID_RECORD, "stream must be false in a batch")
        content_key = "messages" if kind is TaskKind.CHAT else "prompt"
        unknown = sorted(set(body) - set(self.SAMPLING_KEYS) - self.IGNORED - {content_key})
        if unknown:
            raise RequestError(
                ErrorCode.INVALID_RECORD,
                f"body field(s) {', '.join(unknown)} are not supported by this service",
            )
        sampling = {}
        for key, ours in self.SAMPLING_KEYS.items():
            if body.get(key) is not None:
                value = body[key]
                sampling[ours] = [value] if key == "stop" and isinstance(value, str) else value
        sampling.update(self._logprobs(kind, body))
        if kind is TaskKind.CHAT:
            if "messages" not in body:
                raise RequestError(ErrorCode.EMPTY_MESSAGES, "body has no messages")
            req = build_request(rid, task, defaults, sampling, messages=body["messages"])
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            req = build_request(rid, task, defaults, sampling, prompt=prompt)
        return Parsed(req, location)

    def _embedding(self, rid: str, body: dict[str, Any], location) -> Parsed:
        unknown = sorted(set(body) - self.EMBEDDING_KEYS)
        if unknown:
            raise RequestError(
                ErrorCode.INVALID_RECORD,
                f"body field(s) {', '.join(unknown)} are not supported for /v1/embeddings",
            )
        if "input" not in body:
            raise RequestError(ErrorCode.EMPTY_INPUT, "body has no input")
        encoding = body.get("encoding_format", "float")
        if encoding not in self.ENCODINGS:
            raise RequestError(
                ErrorCode.INVALID_RECORD,
                f"encoding_format must be float or base64, got {encoding!r}",
            )
        req = embedding_request(rid, body["input"], body.get("dimensions"))
        return Parsed(req, location, encoding=encoding)

    @staticmethod
    def _logprobs(kind: TaskKind, body: dict[str, Any]) -> dict[str, Any]:
        """Chat asks with ``logprobs: true`` (+ ``top_logprobs: n``); completions with ``logprobs: n``."""
        want, top = body.get("logprobs"), body.get("top_logprobs")
        if kind is TaskKind.COMPLETION:
            return {} if want is None else {"logprobs": want}
        if top is not None and want is not True:
            raise RequestError(ErrorCode.INVALID_SAMPLING, "top_logprobs needs logprobs: true")
        if want in (None, False):
            return {}
        if want is not True:
            raise RequestError(ErrorCode.INVALID_SAMPLING, "logprobs must be true or false")
        return {"logprobs": 0 if top is None else top}

    def encode_results(self, items, job) -> bytes:
        lines = []
        for parsed, res in items:
            rid = parsed.request.record_id
            h = id_hash(job.job_id, rid)
            if res.embeddings is not None:
                line = {
                    "id": f"batch_req_{h}",
                    "custom_id": rid,
                    "response": {
                        "status_code": 200,
                        "request_id": f"req_{h}",
                        "body": _embeddings_body(parsed, res, job.model),
                    },
                    "error": None,
                }
                lines.append(json.dumps(line, ensure_ascii=False))
                continue
            usage = {
                "prompt_tokens": res.usage.prompt_tokens,
                "completion_tokens": res.usage.completion_tokens,
                "total_tokens": res.usage.total_tokens,
                "prompt_tokens_details": {"cached_tokens": res.usage.cached_tokens},
            }
            if parsed.request.messages is not None:
                choice = {
                    "index": 0,
                    "message": {"role": "assistant", "content": res.text},
                    "logprobs": _chat_logprobs(res.logprobs),
                    "finish_reason": str(res.finish_reason),
                }
                body: dict[str, Any] = {"id": f"chatcmpl-{h}", "object": "chat.completion"}
            else:
                choice = {
                    "index": 0,
                    "text": res.text,
                    "logprobs": _completion_logprobs(res.logprobs),
                    "finish_reason": str(res.finish_reason),
                }
                body = {"id": f"cmpl-{h}", "object": "text_completion"}
            body.update(created=job.created, model=job.model, choices=[choice], usage=usage)
            line = {
                "id": f"batch_req_{h}",
                "custom_id": rid,
                "response": {"status_code": 200, "request_id": f"req_{h}", "body": body},
                "error": None,
            }
            lines.append(json.dumps(line, ensure_ascii=False))
        return ("\n".join(lines) + "\n").encode() if lines else b""


def _embeddings_body(parsed: Parsed, res: Result, model: str) -> dict[str, Any]:
    """OpenAI's embeddings response: base64 is the vector's little-endian float32 bytes."""
    assert res.embeddings is not None

    def encode(v: Sequence[float]) -> list[float] | str:
        if parsed.encoding == "base64":
            return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()
        return list(v)

    data = [
        {"object": "embedding", "index": i, "embedding": encode(v)}
        for i, v in enumerate(res.embeddings)
    ]
    n = res.usage.prompt_tokens
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": n, "total_tokens": n},
    }


def _chat_logprobs(logprobs: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
    if logprobs is None:
        return None

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    content = [
        {**entry(t.token, t.logprob), "top_logprobs": [entry(a, lp) for a, lp in t.top]}
        for t in logprobs
    ]
    return {"content": content, "refusal": None}


def _completion_logprobs(logprobs: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
    if logprobs is None:
        return None
    offsets, at = [], 0
    for t in logprobs:
        offsets.append(at)
        at += len(t.token)
    return {
        "tokens": [t.token for t in logprobs],
        "token_logprobs": [t.logprob for t in logprobs],
        "top_logprobs": [dict(t.top) for t in logprobs],
        "text_offset": offsets,
    }
