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
  * engines keep their cumulative :class:`Counters` in :meth:`Engine.stats`, and each result's
    ``charge`` is its share of them (the charges of all requests add up to the totals).

``serve(source, on_result)`` is the same contract as a loop: it serves whatever ``source``
hands it until the source is closed, reporting each result through ``on_result``. One thread
per worker process runs it (the engine loop in ``runners/engine_adapter.py``), fed by every
shard in flight, so an engine that can admit requests while others decode (the JAX engine's
slot refill, vLLM's scheduler) keeps its batch full across shards. ``generate`` is ``serve``
over a fixed list.

Engines know nothing about Beam, storage layouts or job specs; ``runners/engine_adapter.py`` is
the one place that bridges them. The request/result vocabulary lives in ``schemas.records``.
Everything in this module is plain Python so the core imports without jax or vllm.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

from hyperbatch.engines.options import EngineOptions, NoOptions
from hyperbatch.schemas.records import Counters, Request, Result


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    name: str  # what the user asked for (catalogue name or path)
    architecture: str  # e.g. "llama"
    context_length: int  # tokens the engine can hold (prompt + completion)
    max_prompt_tokens: int  # longest prompt the engine accepts
    vocab_size: int
    eos_token_ids: tuple[int, ...] = ()
    #: input images one request may show the model (0: a text model, image requests refused)
    max_images: int = 0


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


class RequestSource(Protocol):
    """Where an engine loop takes its requests from."""

    def take(self, max_n: int, wait: bool) -> list[Request] | None:
        """Up to ``max_n`` waiting requests, in arrival order. With ``wait`` it blocks until
        some arrive; without, it may return []. None once the source is closed and drained."""
        ...


class ListSource:
    """A closed source holding a fixed list (``generate``)."""

    def __init__(self, requests: Sequence[Request]):
        self._items = list(requests)

    def take(self, max_n: int, wait: bool) -> list[Request] | None:
        if not self._items:
            return None
        out, self._items = self._items[:max_n], self._items[max_n:]
        return out


class Engine(abc.ABC):
    """Base class of every engine. Subclasses load their model in ``__init__``."""

    #: registry name ("jax", "vllm", ...)
    name: str = ""
    #: the typed ``engine_options`` this engine reads (a light module: see engines.options)
    OPTIONS: ClassVar[type[EngineOptions]] = NoOptions

    def __init__(self, config: EngineConfig):
        self.config = config

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

    def serve(self, source: RequestSource, on_result: OnResult) -> None:
        """Serve requests from ``source`` until it is closed (see the module docstring).

        Default: take what is waiting (up to four batches), ``generate`` it, repeat. A device
        or runtime failure raises (the caller fails the work in flight); a bad request is an
        error result as always.
        """
        while (batch := source.take(4 * max(1, self.config.batch_size), wait=True)) is not None:
            if batch:
                self.generate(batch, on_result)

    @abc.abstractmethod
    def stats(self) -> Counters: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release accelerators, threads and subprocesses. Idempotent."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
