"""The Engine contract: what every inference engine promises the pipeline.

An engine is loaded once per worker process (its constructor loads the model), compiles every
static shape it will use in ``warmup()``, and then serves any number of ``generate()`` calls.

Contract of ``generate(requests)``:
  * returns exactly one :class:`Result` per request, in the order given;
  * a request that cannot be served (prompt too long, rejected sampling values, ...) becomes a
    ``Result`` with ``error`` set -- never an exception that loses the rest of the batch;
  * each result carries its request's ``record_id`` and its own :class:`Usage`;
  * ``on_result`` (optional) is called once per request as soon as its result is final, in any
    order, so callers can report progress;
  * engines keep their cumulative counters in :meth:`Engine.stats`.

Engines know nothing about Beam, storage or job specs; ``runners/engine_adapter.py`` is the one
place that bridges them. Everything in this module is plain Python so the core imports without
jax or vllm.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any


class TaskKind(enum.StrEnum):
    CHAT = "chat"
    COMPLETION = "completion"


class FinishReason(enum.StrEnum):
    STOP = "stop"  # EOS, a stop token id or a stop string
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


class RequestError(ValueError):
    """A request the engine cannot serve; becomes an error result for that record only."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling. ``temperature == 0`` means greedy (deterministic).

    ``top_k == 0`` and ``top_p == 1`` disable those filters. ``seed`` makes a sampled request
    reproducible independently of which batch or slot it lands in.
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

    def __post_init__(self) -> None:
        problems = sampling_problems(dataclasses.asdict(self))
        if problems:
            raise RequestError(ErrorCode.INVALID_SAMPLING, "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def merged(self, overrides: Mapping[str, Any]) -> SamplingParams:
        """A copy with ``overrides`` applied (unknown keys raise RequestError)."""
        return sampling_from_dict(overrides, base=self)


SAMPLING_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SamplingParams))


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
    problems = sampling_problems(values)
    if problems:
        raise RequestError(ErrorCode.INVALID_SAMPLING, "; ".join(problems))
    merged = dataclasses.asdict(base or SamplingParams())
    merged.update(values)
    if isinstance(merged["stop"], str):
        merged["stop"] = (merged["stop"],)
    merged["stop"] = tuple(merged["stop"])
    merged["stop_token_ids"] = tuple(merged["stop_token_ids"])
    return SamplingParams(**merged)


@dataclasses.dataclass(frozen=True)
class Request:
    """One prompt to serve. Exactly one of ``prompt`` (completion) or ``messages`` (chat).

    ``prompt_token_ids`` may be filled in by the caller from :meth:`Engine.prompt_tokens` so the
    engine does not tokenize twice.
    """

    record_id: str
    sampling: SamplingParams = SamplingParams()
    prompt: str | None = None
    messages: tuple[Mapping[str, Any], ...] | None = None
    prompt_token_ids: tuple[int, ...] | None = None

    @property
    def kind(self) -> TaskKind:
        return TaskKind.CHAT if self.messages is not None else TaskKind.COMPLETION

    def with_tokens(self, ids: Sequence[int]) -> Request:
        return dataclasses.replace(self, prompt_token_ids=tuple(ids))


@dataclasses.dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose prefill was reused (prefix cache)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclasses.dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability, and the most likely alternatives (best first)."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclasses.dataclass(frozen=True)
class Result:
    """The outcome of one request: text and finish reason, or an error code and message.

    ``logprobs`` is set (one entry per generated token) when the request asked for them.
    """

    record_id: str
    text: str | None = None
    finish_reason: FinishReason | None = None
    usage: Usage = Usage()
    token_ids: tuple[int, ...] = ()
    error_code: ErrorCode | None = None
    error_message: str | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None

    @property
    def ok(self) -> bool:
        return self.error_code is None

    @classmethod
    def failed(cls, record_id: str, code: ErrorCode, message: str) -> Result:
        return cls(record_id=record_id, error_code=code, error_message=message)


@dataclasses.dataclass
class EngineStats:
    """Cumulative counters since the engine was loaded (all plain numbers, mergeable)."""

    busy_seconds: float = 0.0  # wall time spent inside generate()
    prefill_seconds: float = 0.0  # the part of busy_seconds spent on prompts (prices input tokens)
    load_seconds: float = 0.0
    warmup_seconds: float = 0.0
    compilations: int = 0  # distinct programs compiled (bounded by shape buckets)
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    # Static-shape accounting: token positions computed vs. useful ones.
    computed_token_slots: int = 0
    useful_token_slots: int = 0

    @property
    def padding_waste(self) -> float:
        if self.computed_token_slots == 0:
            return 0.0
        return 1.0 - self.useful_token_slots / self.computed_token_slots

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    name: str  # what the user asked for (catalogue name or path)
    architecture: str  # e.g. "llama"
    context_length: int  # tokens the engine can hold (prompt + completion)
    max_prompt_tokens: int  # longest prompt the engine accepts
    vocab_size: int
    eos_token_ids: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """What the job spec tells an engine. ``options`` holds engine-specific overrides."""

    model: str  # local directory, local .gguf file, gs:// directory/file, or catalogue name
    batch_size: int = 32  # decode batch (static) / max concurrent sequences
    max_seq_len: int | None = None  # KV-cache length; None = engine default bounded by model
    dtype: str = "float32"
    accelerator: str = "cpu"
    accelerator_count: int = 1
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    cache_dir: str | None = None  # where gs:// models are downloaded


OnResult = Callable[[Result], None]


class Engine(abc.ABC):
    """Base class of every engine. Subclasses load their model in ``__init__``."""

    #: registry name ("jax", "vllm", ...)
    name: str = ""

    def __init__(self, config: EngineConfig):
        self.config = config

    @classmethod
    def option_problems(cls, options: Mapping[str, Any]) -> list[str]:
        """Problems with a job's ``engine_options`` for this engine, found before launch."""
        return []

    @classmethod
    def missing_dependency(cls) -> str | None:
        """What must be installed for this engine to load here (checked cheaply), or None."""
        return None

    @property
    @abc.abstractmethod
    def info(self) -> ModelInfo: ...

    @abc.abstractmethod
    def prompt_tokens(self, request: Request) -> list[int]:
        """Render the request (chat template or plain prompt) and tokenize it.

        Raises RequestError (e.g. TEMPLATE_ERROR) for a request that cannot be rendered.
        """

    def warmup(self) -> None:  # noqa: B027 - optional hook
        """Compile every static shape the engine will use. Default: nothing to compile."""

    @abc.abstractmethod
    def generate(
        self, requests: Sequence[Request], on_result: OnResult | None = None
    ) -> list[Result]:
        """Serve ``requests``; see the module docstring for the contract."""

    @abc.abstractmethod
    def stats(self) -> EngineStats: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release accelerators, threads and subprocesses. Idempotent."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
