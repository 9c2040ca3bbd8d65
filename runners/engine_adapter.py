"""The one bridge between the pipeline and an engine: load once per process, order, serve.

``shared_engine`` loads (and warms up) one engine per worker process and job configuration,
shared by every thread and DoFn instance of that process. ``serve`` takes a shard's valid
records, tokenizes them once, turns prompts that cannot fit into error results, orders the rest
so shared prefixes sit together and lengths rise (tight prefill buckets, little padding), hands
them to the engine in one call (its static decode batch refills slots as requests finish), and
returns results in input order with the engine's usage accounted to the shard.
This module imports neither Beam nor any engine's heavy dependencies.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from hyperbatch.engines.base import Engine, EngineConfig
from hyperbatch.engines.registry import engine_class
from hyperbatch.schemas.formats import Parsed
from hyperbatch.schemas.records import Counters, ErrorCode, RequestError, Result

log = logging.getLogger(__name__)


def engine_config(spec: Any) -> EngineConfig:
    return EngineConfig(
        model=spec.model,
        batch_size=spec.batch_size,
        max_seq_len=spec.max_seq_len,
        dtype=spec.resolved_dtype,
        accelerator=spec.accelerator,
        accelerator_count=spec.accelerator_count,
        options=dict(spec.engine_options),
    )


@dataclasses.dataclass
class LoadedEngine:
    engine: Engine
    load_seconds: float  # construction + warmup: charged to the first shard it serves
    warmup_stats: Counters  # what loading and warmup did (compilations): charged likewise
    charged: bool = False
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


_LOADED: dict[str, LoadedEngine] = {}
_LOAD_LOCK = threading.Lock()


def shared_engine(spec: Any) -> LoadedEngine:
    """The process's engine for this configuration, loaded and warmed up on first use."""
    config = engine_config(spec)
    key = json.dumps([spec.engine, dataclasses.asdict(config)], sort_keys=True, default=str)
    with _LOAD_LOCK:
        loaded = _LOADED.get(key)
        if loaded is None:
            t0 = time.perf_counter()
            engine = engine_class(spec.engine)(config)
            engine.warmup()
            stats = engine.stats()
            loaded = LoadedEngine(engine, time.perf_counter() - t0, stats)
            log.info(
                "loaded engine %s for %s in %.1fs", spec.engine, spec.model, loaded.load_seconds
            )
            _LOADED[key] = loaded
        return loaded


@atexit.register
def close_engines() -> None:
    """Release every engine this process loaded (accelerators, threads, subprocesses)."""
    with _LOAD_LOCK:
        for loaded in _LOADED.values():
            try:
                loaded.engine.close()
            except Exception:
                log.exception("closing engine failed")
        _LOADED.clear()


@dataclasses.dataclass
class Served:
    results: list[Result]  # aligned with the input records
    engine_delta: Counters  # what the engine did for these records
    charged_load_seconds: float  # engine load/warmup charged to this call (first call only)


def _order_key(parsed: Parsed, n_tokens: int) -> tuple[str, int]:
    messages = parsed.request.messages
    shared_context = json.dumps(messages[:-1], sort_keys=True) if messages else ""
    return shared_context, n_tokens


def serve(
    loaded: LoadedEngine,
    records: Sequence[Parsed],
    on_result: Callable[[Result], None] | None = None,
) -> Served:
    engine = loaded.engine
    max_prompt = engine.info.max_prompt_tokens
    results: list[Result | None] = [None] * len(records)
    runnable: list[tuple[tuple[str, int], int]] = []  # (order key, index)
    requests = []
    for i, p in enumerate(records):
        rid = p.request.record_id
        try:
            ids = engine.prompt_tokens(p.request)
        except RequestError as e:
            results[i] = Result.failed(rid, e.code, e.message)
            continue
        if len(ids) > max_prompt:
            results[i] = Result.failed(
                rid,
                ErrorCode.PROMPT_TOO_LONG,
                f"prompt is {len(ids)} tokens; this model/engine accepts at most {max_prompt}. "
                "Shorten it, or raise max_seq_len if the model's context allows",
            )
            continue
        requests.append(p.request.with_tokens(ids))
        runnable.append((_order_key(p, len(ids)), i))
    for r in results:
        if r is not None and on_result:
            on_result(r)
    order = sorted(range(len(runnable)), key=lambda j: runnable[j][0])
    ordered = [requests[j] for j in order]
    with loaded.lock:
        before = engine.stats()
        # An exception here is an engine or infrastructure failure, not a bad record: it fails
        # the shard (Beam retries the bundle; a rerun resumes) rather than erroring its records.
        outputs = engine.generate(ordered, on_result=on_result) if ordered else []
        delta = engine.stats() - before
        charged = 0.0
        if not loaded.charged:  # the process's first shard also pays for loading and warmup
            delta = delta + loaded.warmup_stats
            charged, loaded.charged = loaded.load_seconds, True
    if len(outputs) != len(ordered):
        raise RuntimeError(
            f"engine {engine.name} returned {len(outputs)} results for {len(ordered)} requests"
        )
    for j, out in zip(order, outputs, strict=True):
        i = runnable[j][1]
        if out.record_id != records[i].request.record_id:
            raise RuntimeError(f"engine {engine.name} returned results out of order")
        results[i] = out
    return Served([r for r in results if r is not None], delta, charged)
