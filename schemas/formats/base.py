"""What every format shares: record locations and errors, parsed requests, the format contract,
JSON-lines cutting, chat-message validation, and our own result record (``schemas/result.avsc``).
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any, ClassVar

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
    """A valid input record, ready for the engine. ``echo`` is what the output line repeats
    of the input (a Vertex line's instance); ``encoding`` how vectors are written (OpenAI's
    ``encoding_format``)."""

    request: Request
    location: Location
    metadata: Mapping[str, str] | None = None
    echo: Mapping[str, Any] | None = None
    encoding: str = "float"


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


def id_hash(*parts: str, n: int = 24) -> str:
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


def build_request(
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


class JsonLinesFormat(InputFormat):
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
        # decoded here: json.loads(bytes) guesses UTF-16/32 for binary junk and says so
        return json.loads(raw.decode("utf-8"))

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
        except UnicodeDecodeError as e:
            return RecordError(
                None, location, ErrorCode.INVALID_JSON,
                f"the line is not UTF-8 text (byte {e.start}): JSON lines must be UTF-8",
            )  # fmt: skip
        except ValueError as e:
            return RecordError(None, location, ErrorCode.INVALID_JSON, f"not valid JSON: {e}")
        if not isinstance(obj, dict):
            return RecordError(
                None, location, ErrorCode.INVALID_RECORD, "a record must be a JSON object"
            )
        rid = obj.get(self.id_key)
        if rid is None or rid == "":
            return RecordError(
                None,
                location,
                ErrorCode.MISSING_ID,
                f"record has no {self.id_key!r} (a non-empty string); add one so its result "
                "can be matched",
            )
        if not isinstance(rid, str):
            return RecordError(
                str(rid),
                location,
                ErrorCode.MISSING_ID,
                f"{self.id_key} must be a string, got {type(rid).__name__} {rid!r}; quote it "
                f'("{self.id_key}": "{rid}")',
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


def result_logprobs(logprobs: Sequence[TokenLogprob] | None) -> list[dict[str, Any]] | None:
    if logprobs is None:
        return None
    return [
        {"token": t.token, "logprob": t.logprob,
         "top_logprobs": [{"token": a, "logprob": lp} for a, lp in t.top]}
        for t in logprobs
    ]  # fmt: skip


#: OpenAI's limit on the inputs of one embeddings request
MAX_EMBEDDING_INPUTS = 2048


def embedding_request(
    record_id: str, inputs: Any, dimensions: Any = None, what: str = "input"
) -> Request:
    """An embedding request for one text or a list of texts; RequestError says what is wrong."""
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(texts, list):
        raise RequestError(
            ErrorCode.INVALID_RECORD, f"{what} must be a string or a list of strings"
        )
    if not texts:
        raise RequestError(ErrorCode.EMPTY_INPUT, f"{what} is an empty list: give it some text")
    if len(texts) > MAX_EMBEDDING_INPUTS:
        raise RequestError(
            ErrorCode.TOO_MANY_INPUTS,
            f"{what} has {len(texts)} texts; a request may hold at most {MAX_EMBEDDING_INPUTS}: "
            "split it",
        )
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise RequestError(
                ErrorCode.INVALID_RECORD,
                f"{what}[{i}] is not a string (a {type(t).__name__}): send text; token "
                "arrays are not supported",
            )
        if not t.strip():
            raise RequestError(ErrorCode.EMPTY_INPUT, f"{what}[{i}] is empty: give it some text")
    if dimensions is not None and not (
        isinstance(dimensions, int) and not isinstance(dimensions, bool) and dimensions >= 1
    ):
        raise RequestError(
            ErrorCode.INVALID_DIMENSIONS,
            f"dimensions must be a positive integer, got {dimensions!r}",
        )
    return Request(record_id=record_id, texts=tuple(texts), dimensions=dimensions)


def embedding_record(parsed: Parsed, res: Result, job: JobInfo) -> dict[str, Any]:
    """Our result record for an embedding (one text per record: ``jsonl``/``avro``)."""
    assert res.embeddings is not None
    return {
        "id": parsed.request.record_id,
        "embedding": list(res.embeddings[0]),
        "usage": {"prompt_tokens": res.usage.prompt_tokens},
        "truncated": bool(res.truncated[0]) if res.truncated else False,
        "model": job.model,
        "job_id": job.job_id,
        "metadata": dict(parsed.metadata) if parsed.metadata else None,
    }


def result_record(parsed: Parsed, res: Result, job: JobInfo) -> dict[str, Any]:
    if res.embeddings is not None:
        return embedding_record(parsed, res, job)
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
        "logprobs": result_logprobs(res.logprobs),
    }


def metadata_of(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise RequestError(ErrorCode.INVALID_RECORD, "metadata must map strings to strings")
    return dict(value)


def encode_errors(errors: Sequence[RecordError]) -> bytes:
    lines = [json.dumps(e.to_dict(), ensure_ascii=False) for e in errors]
    return ("\n".join(lines) + "\n").encode() if lines else b""
