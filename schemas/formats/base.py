"""What every format shares: record locations and errors, parsed requests, the format contract,
JSON-lines cutting, chat-message validation, and our own result record (``schemas/result.avsc``).
"""

from __future__ import annotations

import abc
import base64
import dataclasses
import hashlib
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any, ClassVar

from hyperbatch.schemas.images import ImageInput, content_is_empty, content_parts
from hyperbatch.schemas.records import (
    MAX_GUIDANCE,
    MAX_IMAGE_STEPS,
    MAX_IMAGES_PER_REQUEST,
    ErrorCode,
    ImageParams,
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
    #: what a format's error line repeats of the input (a Vertex line's request), when known
    echo: Mapping[str, Any] | None = dataclasses.field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "record_id": self.record_id,
            "source_file": self.location.file,
            "source_line": self.location.line,
            "code": str(self.code),
            "message": self.message,
        }


@dataclasses.dataclass(frozen=True)
class ForcedToolCall:
    """A chat request whose answer must be a call of one of its tools (OpenAI's ``tool_choice``
    ``required`` or a named function): the engine is constrained to the call's JSON, and the
    output line carries it as ``tool_calls``. ``name`` is the function a named choice forces (the
    output is its arguments); None: any of the tools (the output is ``{"name", "arguments"}``)."""

    name: str | None = None


@dataclasses.dataclass(frozen=True)
class Parsed:
    """A valid input record, ready for the engine. ``echo`` is what the output line repeats
    of the input (a Vertex line's instance); ``encoding`` how vectors are written (OpenAI's
    ``encoding_format``); ``model`` the model the record names (OpenAI's ``body.model``; after
    :func:`check_model`, the served name its output carries); ``tool_call`` how a forced tool
    call is written back."""

    request: Request
    location: Location
    metadata: Mapping[str, str] | None = None
    echo: Mapping[str, Any] | None = None
    encoding: str = "float"
    model: str | None = None
    tool_call: ForcedToolCall | None = None

    def failed(self, code: ErrorCode, message: str) -> RecordError:
        """This record's error record (it keeps the echo, for formats that repeat the input)."""
        return RecordError(self.request.record_id, self.location, code, message, self.echo)


@dataclasses.dataclass(frozen=True)
class Unit:
    """A piece of a file the planner can cut between: a line, or an Avro block."""

    start: int  # byte offset
    end: int
    raws: Sequence[Any]  # raw records in the unit (bytes lines, or dicts)
    positions: int  # line/record numbers the unit spans (a blank line: 1 position, no record)


@dataclasses.dataclass(frozen=True)
class JobInfo:
    """What result encoding needs to know about the job. ``model`` is the name its outputs
    carry (the first served name) unless a record named another served one."""

    job_id: str
    model: str
    created: int  # unix seconds
    task: TaskKind = TaskKind.CHAT


MODEL_MISMATCH_POLICIES = ("error", "ignore")


def check_model(
    item: Parsed, served: Sequence[str], mismatch: str = "error"
) -> Parsed | RecordError:
    """A record that names a model (``body.model``) must name one this job serves: another name
    is a ``model_mismatch`` error -- never a silent substitution -- unless ``mismatch`` is
    ``ignore``. The record keeps the served name its output will carry (None: the job's first)."""
    asked = item.model
    if asked is None:
        return item
    if asked in served:
        return item
    if mismatch == "ignore":
        return dataclasses.replace(item, model=None)
    names = ", ".join(repr(n) for n in served)
    return item.failed(
        ErrorCode.MODEL_MISMATCH,
        f"the record asks for model {asked!r} but this job serves {names}; name a served model, "
        "add it to the job's served_model_name, or set model_mismatch: ignore",
    )  # fmt: skip


def id_hash(*parts: str, n: int = 24) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:n]


def validate_messages(
    messages: Any, images: list[ImageInput] | None = None
) -> tuple[dict[str, Any], ...]:
    """Chat messages as (role, content) dicts; raises RequestError with what is wrong. Given
    ``images``, ``image_url`` content parts are served: each is appended to it and the content
    becomes parts (``schemas.images.content_parts``); a text-only content is a string."""
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
        if isinstance(content, list) and images is not None:
            content = content_parts(content, i, images)
        elif isinstance(content, list):  # content parts: only text parts can be served here
            texts = []
            for part in content:
                if not (isinstance(part, Mapping) and part.get("type") == "text"):
                    raise RequestError(
                        ErrorCode.INVALID_RECORD,
                        f"messages[{i}].content has a non-text part; only text is supported",
                    )
                texts.append(str(part.get("text", "")))
            content = "".join(texts)
        if not isinstance(content, str | tuple):
            raise RequestError(ErrorCode.INVALID_RECORD, f"messages[{i}].content must be a string")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    if all(content_is_empty(m["content"]) for m in out):
        raise RequestError(ErrorCode.EMPTY_MESSAGES, "every message is empty")
    return tuple(out)


def build_request(
    record_id: str,
    task: TaskKind,
    defaults: SamplingParams,
    sampling: Mapping[str, Any],
    prompt: Any = None,
    messages: Any = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> Request:
    params = sampling_from_dict(sampling, base=defaults)
    if messages is not None:
        if task is not TaskKind.CHAT:
            raise RequestError(
                ErrorCode.INVALID_RECORD,
                "record has messages but the job's task is completion; give a prompt instead",
            )
        images: list[ImageInput] = []
        return Request(
            record_id=record_id,
            messages=validate_messages(messages, images),
            sampling=params,
            tools=tuple(tools) if tools else None,
            input_images=tuple(images),
        )
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

    def encode_errors(self, errors: Sequence[RecordError], job: JobInfo) -> bytes:
        """The shard's error file: our error records (``schemas/error.avsc``) as JSON lines."""
        return encode_errors(errors)


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


def result_choices(res: Result) -> list[dict[str, Any]] | None:
    """Every completion of a request with n > 1 (None for one completion: it is the record)."""
    if not res.choices:
        return None
    return [
        {"index": c.index, "text": c.text, "finish_reason": str(c.finish_reason),
         "logprobs": result_logprobs(c.logprobs)}
        for c in res.choices
    ]  # fmt: skip


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


#: what an image record may say, beyond its id, prompt and metadata
IMAGE_FIELDS = ("negative_prompt", "width", "height", "steps", "guidance_scale", "seed", "n",
                "scheduler")  # fmt: skip
IMAGE_SCHEDULERS = ("euler", "ddim", "dpmpp_2m")
MAX_IMAGE_SIDE = 4096


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def image_request(
    record_id: str, prompt: Any, fields: Mapping[str, Any], response_format: str = "file"
) -> Request:
    """A text-to-image request; RequestError (with its stable code) says what is wrong. What a
    record does not say is left None: the job's defaults fill it in."""
    if not isinstance(prompt, str):
        raise RequestError(ErrorCode.INVALID_RECORD, "prompt must be a string")
    if not prompt.strip():
        raise RequestError(ErrorCode.EMPTY_INPUT, "prompt is empty: say what to draw")
    f = {k: v for k, v in fields.items() if v is not None}
    neg = f.get("negative_prompt")
    if neg is not None and not isinstance(neg, str):
        raise RequestError(ErrorCode.INVALID_RECORD, "negative_prompt must be a string")
    width, height = f.get("width"), f.get("height")
    if (width is None) != (height is None):
        raise RequestError(ErrorCode.INVALID_SIZE, "give both width and height, or neither")
    for side in (width, height):
        if side is not None and not (_int(side) and 8 <= side <= MAX_IMAGE_SIDE and side % 8 == 0):
            raise RequestError(
                ErrorCode.INVALID_SIZE,
                f"size {width}x{height}: width and height must be multiples of 8 from 8 to "
                f"{MAX_IMAGE_SIDE}",
            )
    steps = f.get("steps")
    if steps is not None and not (_int(steps) and 1 <= steps <= MAX_IMAGE_STEPS):
        raise RequestError(
            ErrorCode.INVALID_STEPS, f"steps must be an integer from 1 to {MAX_IMAGE_STEPS}, got "
            f"{steps!r}"
        )  # fmt: skip
    g = f.get("guidance_scale")
    if g is not None and not (
        isinstance(g, int | float) and not isinstance(g, bool) and 0 <= g <= MAX_GUIDANCE
    ):
        raise RequestError(
            ErrorCode.INVALID_GUIDANCE,
            f"guidance_scale must be a number from 0 to {MAX_GUIDANCE:g}, got {g!r}",
        )
    seed = f.get("seed")
    if seed is not None and not (_int(seed) and 0 <= seed < 2**64):
        raise RequestError(ErrorCode.INVALID_RECORD, f"seed must be an integer >= 0, got {seed!r}")
    n = f.get("n", 1)
    if not (_int(n) and 1 <= n <= MAX_IMAGES_PER_REQUEST):
        raise RequestError(
            ErrorCode.INVALID_N,
            f"n must be an integer from 1 to {MAX_IMAGES_PER_REQUEST}, got {n!r}",
        )
    scheduler = f.get("scheduler")
    if scheduler is not None and scheduler not in IMAGE_SCHEDULERS:
        raise RequestError(
            ErrorCode.INVALID_RECORD,
            f"scheduler {scheduler!r} is not one of {', '.join(IMAGE_SCHEDULERS)}",
        )
    params = ImageParams(
        negative_prompt=neg, width=width, height=height, steps=steps,
        guidance_scale=None if g is None else float(g), scheduler=scheduler, seed=seed, n=n,
        response_format=response_format,
    )  # fmt: skip
    return Request(record_id=record_id, prompt=prompt, image=params)


def image_entries(res: Result) -> list[dict[str, Any]]:
    """Each image of a result: where it is (``uri``) or the file inline (``b64_json``), and how
    it was made."""
    out = []
    for img in res.images or ():
        where = (
            {"uri": img.uri}
            if img.uri is not None
            else {"b64_json": base64.b64encode(img.data or b"").decode()}
        )
        out.append({
            **where, "seed": img.seed, "width": img.width, "height": img.height,
            "steps": img.steps, "scheduler": img.scheduler,
            "guidance_scale": img.guidance_scale, "truncated": img.truncated,
        })  # fmt: skip
    return out


def image_record(parsed: Parsed, res: Result, job: JobInfo) -> dict[str, Any]:
    """Our result record for an image request (``jsonl``/``avro``, and every image job's
    index): the images and how each was made, the device seconds it was charged."""
    return {
        "id": parsed.request.record_id,
        "prompt": parsed.request.prompt or "",
        "images": image_entries(res),
        "seconds": round(res.charge.busy_seconds, 6),
        "model": job.model,
        "job_id": job.job_id,
        "metadata": dict(parsed.metadata) if parsed.metadata else None,
    }


def result_record(parsed: Parsed, res: Result, job: JobInfo) -> dict[str, Any]:
    if res.embeddings is not None:
        return embedding_record(parsed, res, job)
    if res.images is not None:
        return image_record(parsed, res, job)
    return {
        "id": parsed.request.record_id,
        "text": res.text or "",
        "finish_reason": str(res.finish_reason),
        "usage": {
            "prompt_tokens": res.usage.prompt_tokens,
            "completion_tokens": res.usage.completion_tokens,
            "cached_tokens": res.usage.cached_tokens,
            # prompt tokens that stand for input images (vision-language jobs only)
            **({"image_tokens": res.usage.image_tokens} if res.usage.image_tokens else {}),
        },
        "model": parsed.model or job.model,
        "job_id": job.job_id,
        "metadata": dict(parsed.metadata) if parsed.metadata else None,
        "logprobs": result_logprobs(res.logprobs),
        "choices": result_choices(res),
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
