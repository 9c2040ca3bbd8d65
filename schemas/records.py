"""The record vocabulary every layer above shares: requests, sampling, results, errors, counters.

A ``Request`` carries one record's prompt (completion) or messages (chat) and its own
``SamplingParams``; a ``Result`` carries the text and ``Usage``, or an ``ErrorCode`` and a message
that says what to do. Both carry the record's id (the user's ``custom_id`` where the format has
one) from input to output, errors included. ``Counters`` is the one set of sums that the engine,
a shard, the progress of a run and the cost manifest all keep. Plain Python: no engine, no Beam.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hyperbatch.schemas.images import ImageInput


class TaskKind(enum.StrEnum):
    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDING = "embedding"  # texts in, one vector per text out
    IMAGE = "image"  # a prompt in, images out (text-to-image)


class FinishReason(enum.StrEnum):
    STOP = "stop"  # EOS, a stop token id, a stop string, or the output's grammar is complete
    LENGTH = "length"  # max_tokens (or the KV cache) reached


class ErrorCode(enum.StrEnum):
    """Why a single record was not served. Stable strings: they are written to error files."""

    INVALID_JSON = "invalid_json"
    INVALID_RECORD = "invalid_record"
    MISSING_ID = "missing_id"
    DUPLICATE_ID = "duplicate_id"
    UNSUPPORTED_URL = "unsupported_url"
    UNSUPPORTED_METHOD = "unsupported_method"
    EMPTY_MESSAGES = "empty_messages"
    INVALID_SAMPLING = "invalid_sampling"
    PROMPT_TOO_LONG = "prompt_too_long"
    TEMPLATE_ERROR = "template_error"
    ENGINE_REJECTED = "engine_rejected"
    ENGINE_FAILED = "engine_failed"
    EMPTY_INPUT = "empty_input"  # an embedding input that is an empty string
    TOO_MANY_INPUTS = "too_many_inputs"  # more inputs in one request than the format allows
    INVALID_DIMENSIONS = "invalid_dimensions"  # dimensions the model cannot give
    INVALID_SIZE = "invalid_size"  # an image size not a multiple of 8, or not served by the job
    INVALID_STEPS = "invalid_steps"  # denoising steps out of range
    INVALID_GUIDANCE = "invalid_guidance"  # a negative or absurd guidance scale
    INVALID_N = "invalid_n"  # images per request out of range
    MODEL_MISMATCH = "model_mismatch"  # the record names a model this job does not serve
    INVALID_GUIDED = "invalid_guided"  # a malformed output constraint (guided, response_format)
    UNSUPPORTED_GUIDED = "unsupported_guided"  # a constraint the grammar engine cannot enforce
    UNSUPPORTED_TOOLS = "unsupported_tools"  # tools asked for in a way this service cannot serve
    # input images (vision-language models)
    IMAGE_NOT_FOUND = "image_not_found"  # no such object or file
    INVALID_IMAGE = "invalid_image"  # not an image, corrupt or truncated, a bad data: URL
    IMAGE_TOO_LARGE = "image_too_large"  # over the byte or pixel limit (decompression bombs)
    UNSUPPORTED_IMAGE_TYPE = "unsupported_image_type"  # an image, but not JPEG, PNG or WebP
    IMAGE_NOT_ALLOWED = "image_not_allowed"  # a source the job may not read (local path, http)
    TOO_MANY_IMAGES = "too_many_images"  # more images than the model/engine takes per request


class RequestError(ValueError):
    """A request the engine cannot serve; becomes an error result for that record only."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class GuidedKind(enum.StrEnum):
    """What an output constraint is (structured outputs)."""

    JSON_SCHEMA = "json_schema"  # the output is JSON that validates against this schema
    JSON_OBJECT = "json_object"  # the output is a JSON object (OpenAI's JSON mode)
    REGEX = "regex"  # the output matches this regular expression
    CHOICE = "choice"  # the output is exactly one of these strings
    GRAMMAR = "grammar"  # the output follows this Lark grammar (llguidance's dialect)


GUIDED_KINDS: tuple[str, ...] = tuple(k.value for k in GuidedKind)


@dataclasses.dataclass(frozen=True)
class Guided:
    """A constraint on a request's output, enforced token by token by the engine.

    ``value`` is text, so the constraint is hashable and a cache key: a JSON schema as JSON (its
    key order kept: the output's properties come in the schema's order), a regex, the choices as
    a JSON list, a grammar; ``{}`` for ``json_object``.
    """

    kind: GuidedKind
    value: str

    @property
    def schema(self) -> dict[str, Any]:
        """The JSON schema the output must validate against (json_schema, json_object)."""
        if self.kind is GuidedKind.JSON_OBJECT:
            return {"type": "object"}
        if self.kind is not GuidedKind.JSON_SCHEMA:
            raise ValueError(f"a {self.kind} constraint has no JSON schema")
        schema: dict[str, Any] = json.loads(self.value)
        return schema

    @property
    def choices(self) -> list[str]:
        if self.kind is not GuidedKind.CHOICE:
            raise ValueError(f"a {self.kind} constraint has no choices")
        choices: list[str] = json.loads(self.value)
        return choices

    def to_dict(self) -> dict[str, Any]:
        """The user-facing form (``{"json_schema": {...}}``, ``{"regex": "..."}``, ...)."""
        if self.kind in (GuidedKind.JSON_SCHEMA, GuidedKind.CHOICE):
            return {str(self.kind): json.loads(self.value)}
        if self.kind is GuidedKind.JSON_OBJECT:
            return {"json_object": True}
        return {str(self.kind): self.value}

    @classmethod
    def json_schema(cls, schema: Mapping[str, Any]) -> Guided:
        # not sorted: the output follows the order of the schema's properties
        return cls(GuidedKind.JSON_SCHEMA, json.dumps(schema, ensure_ascii=False))


def guided_problems(value: Any) -> list[str]:
    """What is wrong with a ``guided`` value (``{"json_schema" | "json_object" | "regex" |
    "choice" | "grammar": ...}``, one key); empty when it is valid. Whether the grammar engine
    can enforce it is the engine's business (``unsupported_guided``)."""
    if isinstance(value, Guided) or value is None:
        return []
    kinds = ", ".join(GUIDED_KINDS)
    if not isinstance(value, Mapping) or len(value) != 1:
        return [f"guided must be an object with exactly one of {kinds}, got {value!r}"[:300]]
    ((kind, v),) = value.items()
    if kind not in GUIDED_KINDS:
        return [f"guided: unknown kind {kind!r}; use one of {kinds}"]
    if kind == "json_schema" and not isinstance(v, Mapping | bool):
        return ["guided.json_schema must be a JSON Schema (an object)"]
    if kind == "json_object" and v is not True:
        return ["guided.json_object must be true"]
    if kind in ("regex", "grammar") and not (isinstance(v, str) and v.strip()):
        return [f"guided.{kind} must be a non-empty string"]
    if kind == "choice" and not (
        isinstance(v, list | tuple) and v and all(isinstance(c, str) and c for c in v)
    ):
        return ["guided.choice must be a non-empty list of non-empty strings"]
    return []


def guided_from(value: Any) -> Guided | None:
    """A Guided from its user-facing form (or a Guided, or None); raises RequestError."""
    if value is None or isinstance(value, Guided):
        return value
    problems = guided_problems(value)
    if problems:
        raise RequestError(ErrorCode.INVALID_GUIDED, "; ".join(problems))
    ((kind, v),) = value.items()
    if kind == "json_schema":
        if isinstance(v, bool):  # JSON Schema's `true`/`false`: anything / nothing
            return Guided(GuidedKind.JSON_SCHEMA, json.dumps(v))
        return Guided.json_schema(v)
    if kind == "json_object":
        return Guided(GuidedKind.JSON_OBJECT, "{}")
    if kind == "choice":
        return Guided(GuidedKind.CHOICE, json.dumps(list(v), ensure_ascii=False))
    return Guided(GuidedKind(kind), v)


MAX_CHOICES = 128  # OpenAI's limit on n


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling. ``temperature == 0`` means greedy (deterministic).

    ``top_k == 0`` and ``top_p == 1`` disable those filters. ``seed`` makes a sampled request
    reproducible independently of which batch or slot it lands in. ``n`` choices are sampled
    per request, each from its own stream (choice ``i`` of a seeded request is reproducible too).
    ``guided`` constrains the output (structured outputs); ``logprobs`` asks for each generated
    token's log-probability and that many alternatives.
    """

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    n: int = 1
    guided: Guided | None = None

    def __post_init__(self) -> None:
        problems = sampling_problems(_fields_of(self))
        if problems:
            raise RequestError(ErrorCode.INVALID_SAMPLING, "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def merged(self, overrides: Mapping[str, Any]) -> SamplingParams:
        """A copy with ``overrides`` applied (unknown keys raise RequestError)."""
        return sampling_from_dict(overrides, base=self)


SAMPLING_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SamplingParams))


def _fields_of(params: SamplingParams) -> dict[str, Any]:
    """The fields as a shallow dict (``dataclasses.asdict`` would turn ``guided`` into a dict)."""
    return {name: getattr(params, name) for name in SAMPLING_FIELDS}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, int | float)) and not isinstance(v, bool) and math.isfinite(v)


def sampling_problems(values: Mapping[str, Any]) -> list[str]:
    """Human-readable problems with sampling values; empty when they are all valid."""
    p: list[str] = []
    v = values
    if "max_tokens" in v and not (_is_int(v["max_tokens"]) and v["max_tokens"] >= 1):
        p.append(f"max_tokens must be an integer >= 1, got {v['max_tokens']!r}")
    if "temperature" in v and not (_is_number(v["temperature"]) and 0 <= v["temperature"] <= 100):
        p.append(f"temperature must be a number in [0, 100], got {v['temperature']!r}")
    if "top_p" in v and not (_is_number(v["top_p"]) and 0 < v["top_p"] <= 1):
        p.append(f"top_p must be a number in (0, 1], got {v['top_p']!r}")
    if "top_k" in v and not (_is_int(v["top_k"]) and v["top_k"] >= 0):
        p.append(f"top_k must be an integer >= 0 (0 disables it), got {v['top_k']!r}")
    if (
        "seed" in v
        and v["seed"] is not None
        and not (_is_int(v["seed"]) and 0 <= v["seed"] < 2**63)
    ):
        p.append(f"seed must be a non-negative integer or null, got {v['seed']!r}")
    if "stop" in v:
        stop = v["stop"]
        if not (
            isinstance(stop, list | tuple)
            and len(stop) <= 16
            and all(isinstance(s, str) and s for s in stop)
        ):
            p.append(f"stop must be a list of at most 16 non-empty strings, got {stop!r}")
    if "stop_token_ids" in v:
        ids = v["stop_token_ids"]
        if not (isinstance(ids, list | tuple) and all(_is_int(i) and i >= 0 for i in ids)):
            p.append(f"stop_token_ids must be a list of non-negative integers, got {ids!r}")
    if "ignore_eos" in v and not isinstance(v["ignore_eos"], bool):
        p.append(f"ignore_eos must be true or false, got {v['ignore_eos']!r}")
    for name in ("presence_penalty", "frequency_penalty"):
        if name in v and not (_is_number(v[name]) and -2 <= v[name] <= 2):
            p.append(f"{name} must be a number in [-2, 2], got {v[name]!r}")
    if (
        "logprobs" in v
        and v["logprobs"] is not None
        and not (_is_int(v["logprobs"]) and 0 <= v["logprobs"] <= 20)
    ):
        p.append(f"logprobs must be an integer in [0, 20] or null, got {v['logprobs']!r}")
    if "n" in v and not (_is_int(v["n"]) and 1 <= v["n"] <= MAX_CHOICES):
        p.append(f"n must be an integer in [1, {MAX_CHOICES}], got {v['n']!r}")
    if "guided" in v:
        p += guided_problems(v["guided"])
    return p


def sampling_from_dict(
    values: Mapping[str, Any], base: SamplingParams | None = None
) -> SamplingParams:
    """Build SamplingParams from user values layered over ``base``; raises RequestError."""
    unknown = sorted(set(values) - set(SAMPLING_FIELDS))
    if unknown:
        raise RequestError(
            ErrorCode.INVALID_SAMPLING,
            f"unknown sampling parameter(s) {', '.join(unknown)}; "
            f"supported: {', '.join(SAMPLING_FIELDS)}",
        )
    values = dict(values)
    if "guided" in values:  # its own code: the constraint is wrong, not the sampling values
        values["guided"] = guided_from(values["guided"])
    problems = sampling_problems(values)
    if problems:
        raise RequestError(ErrorCode.INVALID_SAMPLING, "; ".join(problems))
    merged = _fields_of(base or SamplingParams())
    merged.update(values)
    if isinstance(merged["stop"], str):
        merged["stop"] = (merged["stop"],)
    merged["stop"] = tuple(merged["stop"])
    merged["stop_token_ids"] = tuple(merged["stop_token_ids"])
    return SamplingParams(**merged)


_SIZE = re.compile(r"^([1-9][0-9]{0,4})x([1-9][0-9]{0,4})$")


def parse_size(value: Any) -> tuple[int, int] | None:
    """(width, height) of a size like ``"512x512"`` whose sides are multiples of 8, else None."""
    m = _SIZE.match(value) if isinstance(value, str) else None
    if m is None:
        return None
    w, h = int(m.group(1)), int(m.group(2))
    return (w, h) if w % 8 == 0 and h % 8 == 0 else None


#: the most images one image request may ask for (OpenAI's images API allows 10)
MAX_IMAGES_PER_REQUEST = 10
MAX_IMAGE_STEPS = 1000
MAX_GUIDANCE = 100.0


@dataclasses.dataclass(frozen=True)
class ImageParams:
    """What a text-to-image request asks for; ``None`` means the job's default (spec ``image``).

    ``n`` images per request: image ``k`` of a request with ``seed`` s uses seed ``s + k``
    (reproducible in any batch); without a seed each image draws its own (reported).
    ``response_format``: ``file`` (written into the job folder; results carry its URI) or
    ``b64_json`` (the encoded image inline in the result, no file)."""

    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    scheduler: str | None = None
    seed: int | None = None
    n: int = 1
    response_format: str = "file"


@dataclasses.dataclass(frozen=True)
class GeneratedImage:
    """One generated image: its pixels (uint8 [H, W, 3]) from the engine; after the pipeline has
    written it, ``data`` (the encoded file) and ``uri`` (where it is, or None when inline)."""

    seed: int
    width: int
    height: int
    steps: int
    scheduler: str
    guidance_scale: float
    truncated: bool = False  # the prompt was cut to the text encoder's window
    pixels: Any = None
    data: bytes | None = None
    uri: str | None = None


@dataclasses.dataclass(frozen=True)
class Request:
    """One record to serve. Exactly one of ``prompt`` (completion), ``messages`` (chat) or
    ``texts`` (embedding: one vector per text; ``dimensions`` truncates and renormalises them);
    an image request has a ``prompt`` and ``image`` (what to draw).

    ``prompt_token_ids`` may be filled in by the caller from :meth:`Engine.prompt_tokens` so the
    engine does not tokenize twice (for texts: all of them, one after the other). ``tools`` (chat)
    are the function tools handed to the chat template, as OpenAI's request carries them.
    """

    record_id: str
    sampling: SamplingParams = SamplingParams()
    prompt: str | None = None
    messages: tuple[Mapping[str, Any], ...] | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    texts: tuple[str, ...] | None = None
    dimensions: int | None = None
    tools: tuple[Mapping[str, Any], ...] | None = None
    image: ImageParams | None = None
    #: images a chat request's messages show the model: a message content part
    #: ``{"type": "image", "image": i}`` stands for ``input_images[i]`` (schemas.images)
    input_images: tuple[ImageInput, ...] = ()

    @property
    def kind(self) -> TaskKind:
        if self.texts is not None:
            return TaskKind.EMBEDDING
        if self.image is not None:
            return TaskKind.IMAGE
        return TaskKind.CHAT if self.messages is not None else TaskKind.COMPLETION

    def with_tokens(self, ids: Sequence[int]) -> Request:
        return dataclasses.replace(self, prompt_token_ids=tuple(ids))


@dataclasses.dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose prefill was reused (prefix cache)
    image_tokens: int = 0  # prompt tokens that stand for input images (part of prompt_tokens)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclasses.dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability, and the most likely alternatives (best first).

    ``token_bytes`` (and ``top_bytes``, one per alternative) are the tokens' exact UTF-8 bytes
    where the engine knows them (a token may hold part of a character); empty: the text's bytes.
    """

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()
    token_bytes: bytes | None = None
    top_bytes: tuple[bytes, ...] = ()


@dataclasses.dataclass(frozen=True)
class Choice:
    """One of the ``n`` completions of a request."""

    index: int
    text: str
    finish_reason: FinishReason
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Charge:
    """What serving one request cost the engine: its share of every device call it took part
    in. An engine divides each call's time and token slots among the requests in it by their
    useful slots (tokens they prefilled or generated in that call), so idle slots and padding are
    paid by the requests that rode in the batch, and the charges of all requests add up to the
    engine's own totals."""

    busy_seconds: float = 0.0
    prefill_seconds: float = 0.0
    computed_token_slots: float = 0.0
    useful_token_slots: int = 0

    def __add__(self, other: Charge) -> Charge:
        return Charge(
            self.busy_seconds + other.busy_seconds,
            self.prefill_seconds + other.prefill_seconds,
            self.computed_token_slots + other.computed_token_slots,
            self.useful_token_slots + other.useful_token_slots,
        )


@dataclasses.dataclass(frozen=True)
class Result:
    """The outcome of one request: text and finish reason, or an error code and message.

    ``logprobs`` is set (one entry per generated token) when the request asked for them;
    ``embeddings`` (one vector per text, and whether each text was cut to the model's length in
    ``truncated``) for an embedding request; ``charge`` is the request's share of the engine's
    work (``Charge``). A request with ``n > 1`` has all its completions in ``choices`` (the first
    is also in ``text``/``finish_reason``/``token_ids``/``logprobs``); ``usage`` counts the prompt
    once and the tokens of every choice.
    """

    record_id: str
    text: str | None = None
    finish_reason: FinishReason | None = None
    usage: Usage = Usage()
    token_ids: tuple[int, ...] = ()
    error_code: ErrorCode | None = None
    error_message: str | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None
    embeddings: tuple[tuple[float, ...], ...] | None = None
    truncated: tuple[bool, ...] = ()
    token_counts: tuple[int, ...] = ()  # per text of an embedding request (after truncation)
    images: tuple[GeneratedImage, ...] | None = None  # an image request's images, in order
    charge: Charge = Charge()
    choices: tuple[Choice, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error_code is None

    def all_choices(self) -> tuple[Choice, ...]:
        """Every completion, in index order (one for a request with n = 1)."""
        if self.choices:
            return self.choices
        reason = self.finish_reason or FinishReason.STOP
        return (Choice(0, self.text or "", reason, self.token_ids, self.logprobs),)

    @classmethod
    def failed(cls, record_id: str, code: ErrorCode, message: str) -> Result:
        return cls(record_id=record_id, error_code=code, error_message=message)


@dataclasses.dataclass
class Counters:
    """What a part of a run did, as sums: the engine since it was loaded, one shard (kept in its
    commit marker), the progress of a run (the bar, ``status.json``) and the whole job (the cost
    manifest: the sum over its shards). Every field adds; ``a + b`` and ``a - b`` work field by
    field, so a shard's share of the engine's work is the difference of two snapshots."""

    records: int = 0  # records finished: results + errors
    results: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose prefill was reused (prefix cache)
    embeddings: int = 0  # vectors returned (an embedding request may ask for many)
    images: int = 0  # images generated
    input_images: int = 0  # images read by vision-language models (requests' input images)
    image_tokens: int = 0  # prompt tokens that stood for input images (part of prompt_tokens)
    accelerator_seconds: float = 0.0  # held by a worker for this work, load and warmup included
    busy_seconds: float = 0.0  # inside the engine, serving requests
    prefill_seconds: float = 0.0  # the part of busy_seconds spent on prompts (prices input tokens)
    load_seconds: float = 0.0
    warmup_seconds: float = 0.0
    compilations: int = 0  # distinct programs compiled (bounded by the shape buckets)
    # token positions computed (static shapes: padding included); fractional when a device
    # call's slots are shared out among the shards whose requests rode in it
    computed_token_slots: float = 0
    useful_token_slots: int = 0  # of which real tokens
    records_planned: int = 0
    shards_planned: int = 0
    shards: int = 0  # shards finished (committed)
    shards_resumed: int = 0  # of which an earlier attempt had committed

    def __add__(self, other: Counters) -> Counters:
        return Counters(**{f: getattr(self, f) + getattr(other, f) for f in COUNTER_FIELDS})

    def __sub__(self, other: Counters) -> Counters:
        return Counters(**{f: getattr(self, f) - getattr(other, f) for f in COUNTER_FIELDS})

    @property
    def padding_waste(self) -> float:
        """The share of computed token positions that were padding or idle slots."""
        if self.computed_token_slots == 0:
            return 0.0
        return 1.0 - self.useful_token_slots / self.computed_token_slots

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Counters:
        """From ``to_dict`` output (unknown keys ignored; ``records_in`` of older markers read)."""
        known = {k: v for k, v in values.items() if k in COUNTER_FIELDS}
        if "records" not in known and "records_in" in values:
            known["records"] = values["records_in"]
        return cls(**known)

    @classmethod
    def sum(cls, items: Sequence[Counters]) -> Counters:
        total = cls()
        for c in items:
            total = total + c
        return total


COUNTER_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Counters))
