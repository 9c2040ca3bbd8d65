"""Input/output record formats: OpenAI Batch JSONL, our JSONL, and Avro prompt records.

A format plug-in knows how to (1) cut a file into units with byte offsets so the planner can
shard it without holding it, (2) read one record's id cheaply for the duplicate check,
(3) turn a raw record into an engine ``Request`` or a ``RecordError`` with a reason, and
(4) encode results in the format users expect back (OpenAI Batch output lines for ``openai``,
our result record for ``jsonl`` / ``avro``). Errors are always written as JSONL error records.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any, ClassVar

import fastavro

from hyperbatch.schemas import avro
from hyperbatch.schemas.records import (
    ErrorCode,
    Request,
    RequestError,
    Result,
    SamplingParams,
    TaskKind,
    TokenLogprob,
    sampling_from_dict,
)


@dataclasses.dataclass(frozen=True)
class Location:
    file: str
    line: int  # 1-based line (text) or record number (avro)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclasses.dataclass(frozen=True)
class RecordError:
    record_id: str | None
    location: Location
    code: ErrorCode
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "record_id": self.record_id,
            "source_file": self.location.file,
            "source_line": self.location.line,
            "code": str(self.code),
            "message": self.message,
        }


@dataclasses.dataclass(frozen=True)
class Parsed:
    """A valid input record, ready for the engine."""

    request: Request
    location: Location
    metadata: Mapping[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class Unit:
    """A piece of a file the planner can cut between: a line, or an Avro block."""

    start: int  # byte offset
    end: int
    raws: Sequence[Any]  # raw records in the unit (bytes lines, or dicts)
    positions: int  # line/record numbers the unit spans (a blank line: 1 position, no record)


@dataclasses.dataclass(frozen=True)
class JobInfo:
    """What result encoding needs to know about the job."""

    job_id: str
    model: str
    created: int  # unix seconds


def _id_hash(*parts: str, n: int = 24) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:n]


def validate_messages(messages: Any) -> tuple[dict[str, str], ...]:
    """Chat messages as (role, content) dicts; raises RequestError with what is wrong."""
    if not isinstance(messages, list):
        raise RequestError(ErrorCode.INVALID_RECORD, "messages must be a list of {role, content}")
    if not messages:
        raise RequestError(ErrorCode.EMPTY_MESSAGES, "messages is empty: give at least one message")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise RequestError(ErrorCode.INVALID_RECORD, f"messages[{i}] must be an object")
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "user", "assistant", "developer"):
            raise RequestError(
                ErrorCode.INVALID_RECORD,
                f"messages[{i}].role must be system, user, assistant or developer; got {role!r}",
            )
        if isinstance(content, list):  # content parts: only text parts can be served here
            texts = []
            for part in content:
                if not (isinstance(part, Mapping) and part.get("type") == "text"):
                    raise RequestError(
                        ErrorCode.INVALID_RECORD,
                        f"messages[{i}].content has a non-text part; only text is supported",
                    )
                texts.append(str(part.get("text", "")))
            content = "".join(texts)
        if not isinstance(content, str):
            raise RequestError(ErrorCode.INVALID_RECORD, f"messages[{i}].content must be a string")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    if not any(m["content"].strip() for m in out):
        raise RequestError(ErrorCode.EMPTY_MESSAGES, "every message is empty")
    return tuple(out)


def _request(
    record_id: str,
    task: TaskKind,
    defaults: SamplingParams,
    sampling: Mapping[str, Any],
    prompt: Any = None,
    messages: Any = None,
) -> Request:
    params = sampling_from_dict(sampling, base=defaults)
    if messages is not None:
        if task is not TaskKind.CHAT:
            raise RequestError(
                ErrorCode.INVALID_RECORD,
                "record has messages but the job's task is completion; give a prompt instead",
            )
        return Request(record_id=record_id, messages=validate_messages(messages), sampling=params)
    if not isinstance(prompt, str):
        raise RequestError(ErrorCode.INVALID_RECORD, "prompt must be a string")
    if not prompt.strip():
        raise RequestError(ErrorCode.EMPTY_MESSAGES, "prompt is empty")
    if task is TaskKind.CHAT:
        return Request(
            record_id=record_id,
            messages=({"role": "user", "content": prompt},),
            sampling=params,
        )
    return Request(record_id=record_id, prompt=prompt, sampling=params)


class InputFormat(abc.ABC):
    name: ClassVar[str]
    result_suffix: ClassVar[str]
    result_content_type: ClassVar[str]

    @abc.abstractmethod
    def units(self, stream: IO[bytes]) -> Iterator[Unit]:
        """Cut a whole file into units with byte offsets (used by the planner)."""

    def header_length(self, stream: IO[bytes]) -> int:
        """Bytes a reader needs from the file's start before any unit (Avro's header)."""
        return 0

    @abc.abstractmethod
    def records(self, header: bytes, data: bytes) -> Iterator[tuple[int, Any]]:
        """``(position offset, raw record)`` for the records of ``data`` (whole units)."""

    @abc.abstractmethod
    def record_id(self, raw: Any) -> str | None:
        """The record's id if it can be read, for the duplicate check; never raises."""

    @abc.abstractmethod
    def parse(
        self, raw: Any, location: Location, task: TaskKind, defaults: SamplingParams
    ) -> Parsed | RecordError: ...

    @abc.abstractmethod
    def encode_results(self, items: Sequence[tuple[Parsed, Result]], job: JobInfo) -> bytes: ...


class _JsonLines(InputFormat):
    result_suffix = ".jsonl"
    result_content_type = "application/jsonl"

    def units(self, stream: IO[bytes]) -> Iterator[Unit]:
        offset = 0
        for line in stream:
            start, offset = offset, offset + len(line)
            yield Unit(start, offset, (line,) if line.strip() else (), 1)  # blank: not a record

    def records(self, header: bytes, data: bytes) -> Iterator[tuple[int, Any]]:
        for i, line in enumerate(io.BytesIO(data)):
            if line.strip():
                yield i, line

    def _load(self, raw: bytes) -> Any:
        return json.loads(raw)

    def record_id(self, raw: Any) -> str | None:
        try:
            obj = self._load(raw)
        except ValueError:
            return None
        rid = obj.get(self.id_key) if isinstance(obj, dict) else None
        return rid if isinstance(rid, str) and rid else None

    id_key: ClassVar[str]

    def parse(
        self, raw: Any, location: Location, task: TaskKind, defaults: SamplingParams
    ) -> Parsed | RecordError:
        try:
            obj = self._load(raw)
        except ValueError as e:
            return RecordError(None, location, ErrorCode.INVALID_JSON, f"not valid JSON: {e}")
        if not isinstance(obj, dict):
            return RecordError(
                None, location, ErrorCode.INVALID_RECORD, "a record must be a JSON object"
            )
        rid = obj.get(self.id_key)
        if not isinstance(rid, str) or not rid:
            return RecordError(
                None if rid is None else str(rid),
                location,
                ErrorCode.MISSING_ID,
                f"record has no {self.id_key!r} (a non-empty string); add one so its result "
                "can be matched",
            )
        try:
            return self._parse_obj(rid, obj, location, task, defaults)
        except RequestError as e:
            return RecordError(rid, location, e.code, e.message)

    @abc.abstractmethod
    def _parse_obj(
        self,
        rid: str,
        obj: dict[str, Any],
        location: Location,
        task: TaskKind,
        defaults: SamplingParams,
    ) -> Parsed: ...


class OpenAIBatch(_JsonLines):
    """OpenAI Batch API files: ``{"custom_id", "method", "url", "body"}`` per line."""

    name = "openai"
    id_key = "custom_id"
    URLS: ClassVar[dict[str, TaskKind]] = {
        "/v1/chat/completions": TaskKind.CHAT,
        "/v1/completions": TaskKind.COMPLETION,
    }
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
            req = _request(rid, task, defaults, sampling, messages=body["messages"])
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            req = _request(rid, task, defaults, sampling, prompt=prompt)
        return Parsed(req, location)

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
            h = _id_hash(job.job_id, rid)
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
                body = {"id": f"chatcmpl-{h}", "object": "chat.completion"}
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


def _result_logprobs(logprobs: Sequence[TokenLogprob] | None) -> list[dict[str, Any]] | None:
    if logprobs is None:
        return None
    return [
        {"token": t.token, "logprob": t.logprob,
         "top_logprobs": [{"token": a, "logprob": lp} for a, lp in t.top]}
        for t in logprobs
    ]  # fmt: skip


def _result_record(parsed: Parsed, res: Result, job: JobInfo) -> dict[str, Any]:
    return {
        "id": parsed.request.record_id,
        "text": res.text or "",
        "finish_reason": str(res.finish_reason),
        "usage": {
            "prompt_tokens": res.usage.prompt_tokens,
            "completion_tokens": res.usage.completion_tokens,
            "cached_tokens": res.usage.cached_tokens,
        },
        "model": job.model,
        "job_id": job.job_id,
        "metadata": dict(parsed.metadata) if parsed.metadata else None,
        "logprobs": _result_logprobs(res.logprobs),
    }


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise RequestError(ErrorCode.INVALID_RECORD, "metadata must map strings to strings")
    return dict(value)


class PromptJsonl(_JsonLines):
    """Our JSONL: ``{"id", "prompt" | "messages", "sampling"?, "metadata"?}`` per line."""

    name = "jsonl"
    id_key = "id"
    KEYS: ClassVar[frozenset[str]] = frozenset({"id", "prompt", "messages", "sampling", "metadata"})

    def _parse_obj(self, rid, obj, location, task, defaults) -> Parsed:
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
        req = _request(rid, task, defaults, sampling, obj.get("prompt"), obj.get("messages"))
        return Parsed(req, location, _metadata(obj.get("metadata")))

    def encode_results(self, items, job) -> bytes:
        lines = [json.dumps(_result_record(p, r, job), ensure_ascii=False) for p, r in items]
        return ("\n".join(lines) + "\n").encode() if lines else b""


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
            sampling = {k: v for k, v in (raw.get("sampling") or {}).items() if v is not None}
            if (raw.get("prompt") is None) == (raw.get("messages") is None):
                raise RequestError(
                    ErrorCode.INVALID_RECORD, "give exactly one of prompt or messages"
                )
            req = _request(rid, task, defaults, sampling, raw.get("prompt"), raw.get("messages"))
            return Parsed(req, location, _metadata(raw.get("metadata")))
        except RequestError as e:
            return RecordError(rid, location, e.code, e.message)

    def encode_results(self, items, job) -> bytes:
        if not items:
            return b""
        return avro.to_avro_bytes("result", [_result_record(p, r, job) for p, r in items])


FORMATS: dict[str, InputFormat] = {f.name: f for f in (OpenAIBatch(), PromptJsonl(), PromptAvro())}


def encode_errors(errors: Sequence[RecordError]) -> bytes:
    lines = [json.dumps(e.to_dict(), ensure_ascii=False) for e in errors]
    return ("\n".join(lines) + "\n").encode() if lines else b""
