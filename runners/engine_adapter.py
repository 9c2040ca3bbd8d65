"""The one bridge between the pipeline and an engine: one engine loop per process, fed by shards.

``shared_loop`` loads (and warms up) one engine per worker process and job configuration and
starts its **engine loop**: one thread that owns the engine (and so the device) and runs
``engine.serve`` over a queue. Every shard in flight on the process -- Beam runs several bundles
at once: harness threads on Dataflow, ``direct_num_workers`` locally -- calls ``serve`` with its
valid records: they are tokenized on the shard's own thread (host work beside the device),
prompts that cannot fit become error results, the rest are ordered so shared prefixes sit
together and lengths rise, submitted to the queue, and the shard waits for its own results. The
engine refills its slots from whichever shard has work, so only the job's last requests decode
with idle slots, whatever ``records_per_shard`` is.

Accounting (exact, nothing counted twice):
  * busy time, prefill time and token slots: each result carries its ``Charge`` (its share of
    every device call it rode in, see ``schemas.records.Charge``); a shard is charged the sum of
    its own results' charges, so the shards' sums equal the engine's totals;
  * load and warmup (time, compilations) are charged once, to the first shard served; later
    compilations (there should be none) to the shard that finishes next;
  * accelerator time: the process's wall time while at least one shard is in flight, split
    equally among the shards in flight at each moment (``TimeLedger``); model load happens
    inside that time, so it is charged once too.

Failures: an engine or device failure fails every shard waiting on the loop (Beam retries their
bundles; a rerun resumes) and the loop goes on serving; a bad request is one error result.
This module imports neither Beam nor any engine's heavy dependencies.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from hyperbatch.engines.base import Engine, EngineConfig
from hyperbatch.engines.registry import engine_class
from hyperbatch.schemas.formats import Parsed
from hyperbatch.schemas.records import Charge, Counters, ErrorCode, Request, RequestError, Result

log = logging.getLogger(__name__)
OnResult = Callable[[Result], None]


def engine_config(spec: Any) -> EngineConfig:
    options = dict(spec.engine_options)
    if spec.task == "image" and spec.engine != "fake":
        options.setdefault("sizes", [spec.image_defaults.size])  # the job's size is served
    return EngineConfig(
        model=spec.model,
        batch_size=spec.batch_size,
        max_seq_len=spec.max_seq_len,
        dtype=spec.resolved_dtype,
        accelerator=spec.accelerator,
        accelerator_count=spec.accelerator_count,
        options=options,
    )


# --------------------------------------------------------------------------- accelerator time


class TimeLedger:
    """Shares the process's wall time among the shards in flight: at every moment, equally."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._shares: dict[object, float] = {}
        self._last = clock()

    def _advance(self) -> None:
        now = self._clock()
        if self._shares:
            each = (now - self._last) / len(self._shares)
            for k in self._shares:
                self._shares[k] += each
        self._last = now

    def start(self, owner: object) -> None:
        with self._lock:
            self._advance()
            self._shares[owner] = 0.0

    def stop(self, owner: object) -> float:
        """The seconds charged to ``owner`` since its ``start``."""
        with self._lock:
            self._advance()
            return self._shares.pop(owner)

    def discard(self, owner: object) -> None:
        """Stop ``owner`` if it is still counted (an attempt that failed)."""
        with self._lock:
            if owner in self._shares:
                self._advance()
                del self._shares[owner]


#: the process's accelerator time, shared by its shards
LEDGER = TimeLedger()


# --------------------------------------------------------------------------- the engine loop


class Ticket:
    """One shard's requests in the loop: results by position, or the loop's failure."""

    def __init__(self, n: int, on_result: OnResult | None):
        self.results: list[Result | None] = [None] * n
        self.on_result = on_result
        self.missing = n
        self.error: BaseException | None = None
        self.done = threading.Event()
        if n == 0:
            self.done.set()

    def deliver(self, index: int, result: Result) -> None:
        self.results[index] = result
        self.missing -= 1
        if self.on_result is not None:
            self.on_result(result)
        if self.missing == 0:
            self.done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()

    def wait(self) -> list[Result]:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return [r for r in self.results if r is not None]


class EngineLoop:
    """The engine on its own thread, serving a queue every shard of the process feeds."""

    def __init__(self, engine: Engine, load_seconds: float, warmup_stats: Counters):
        self.engine = engine
        self.load_seconds = load_seconds  # construction + warmup, charged once
        self.warmup_stats = warmup_stats
        self._charged = False
        self._compilations = warmup_stats.compilations
        self._lock = threading.Condition()
        self._queue: collections.deque[Request] = collections.deque()
        self._owners: dict[str, tuple[Ticket, int, str]] = {}  # internal id -> where it goes
        self._ids = itertools.count()
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name=f"hyperbatch-engine-loop-{engine.name}", daemon=True
        )
        self._thread.start()

    # -- shards ------------------------------------------------------------------------------

    def submit(self, requests: Sequence[Request], on_result: OnResult | None = None) -> Ticket:
        ticket = Ticket(len(requests), on_result)
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine loop is closed")
            for i, r in enumerate(requests):
                # an id of the loop's own, so shards (and jobs) never mix up their results
                internal = f"loop-{next(self._ids)}"
                self._owners[internal] = (ticket, i, r.record_id)
                self._queue.append(dataclasses.replace(r, record_id=internal))
            self._lock.notify_all()
        return ticket

    def charge_once(self) -> tuple[Counters, float]:
        """Load and warmup counters (and seconds), for the first shard that asks; then none.
        Plus compilations since the last call (an engine compiles nothing after warmup)."""
        with self._lock:
            now = self.engine.stats().compilations
            new, self._compilations = max(0, now - self._compilations), now
            if self._charged:
                return Counters(compilations=new), 0.0
            self._charged = True
            return self.warmup_stats + Counters(compilations=new), self.load_seconds

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._thread.join()
        self.engine.close()

    # -- the engine's side (RequestSource) ----------------------------------------------------

    def take(self, max_n: int, wait: bool) -> list[Request] | None:
        with self._lock:
            while wait and not self._queue and not self._closed:
                self._lock.wait()
            if not self._queue and self._closed:
                return None
            n = min(max_n, len(self._queue))
            return [self._queue.popleft() for _ in range(n)]

    def _deliver(self, result: Result) -> None:
        with self._lock:
            ticket, index, record_id = self._owners.pop(result.record_id)
        ticket.deliver(index, dataclasses.replace(result, record_id=record_id))

    def _run(self) -> None:
        while True:
            try:
                self.engine.serve(self, self._deliver)
                return  # closed
            except BaseException as e:
                log.exception("engine %s failed; failing the shards in flight", self.engine.name)
                with self._lock:
                    tickets = {t for t, _, _ in self._owners.values()}
                    self._owners.clear()
                    self._queue.clear()
                for t in tickets:
                    t.fail(e)


_LOOPS: dict[str, EngineLoop] = {}
_LOAD_LOCK = threading.Lock()


def shared_loop(spec: Any) -> EngineLoop:
    """The process's engine loop for this configuration, loaded and warmed up on first use."""
    config = engine_config(spec)
    key = json.dumps(
        [
            spec.engine,
            spec.task in ("embedding", "image") and spec.task,
            dataclasses.asdict(config),
        ],
        sort_keys=True,
        default=str,
    )
    with _LOAD_LOCK:
        loop = _LOOPS.get(key)
        if loop is None:
            t0 = time.perf_counter()
            engine = engine_class(spec.engine, spec.task)(config)
            engine.warmup()
            loop = EngineLoop(engine, time.perf_counter() - t0, engine.stats())
            log.info("loaded engine %s for %s in %.1fs", spec.engine, spec.model, loop.load_seconds)
            _LOOPS[key] = loop
        return loop


@atexit.register
def close_engines() -> None:
    """Stop every engine loop of this process and release its engine."""
    with _LOAD_LOCK:
        for loop in _LOOPS.values():
            try:
                loop.close()
            except Exception:
                log.exception("closing engine failed")
        _LOOPS.clear()


# --------------------------------------------------------------------------- one shard


@dataclasses.dataclass
class Served:
    results: list[Result]  # aligned with the input records
    engine_delta: Counters  # this shard's share of the engine's work (plus load/warmup, once)
    charged_load_seconds: float  # engine load/warmup charged to this call (first call only)


def _order_key(parsed: Parsed, n_tokens: int) -> tuple[str, int]:
    messages = parsed.request.messages
    shared_context = json.dumps(messages[:-1], sort_keys=True) if messages else ""
    return shared_context, n_tokens


def _too_many(engine: Engine, shown: int) -> str:
    most = engine.info.max_images
    if most == 0:
        return (
            f"the record shows {shown} image(s) but {engine.info.name} on engine {engine.name} "
            "reads text only; serve it with a vision-language model (engine jax-vlm or vllm)"
        )
    return (
        f"the record shows {shown} images; this job takes at most {most} per request "
        "(the engine's max_images option)"
    )


def serve(
    loop: EngineLoop,
    records: Sequence[Parsed],
    on_result: Callable[[Result], None] | None = None,
) -> Served:
    """Serve one shard's valid records through the loop; results in input order."""
    engine = loop.engine
    max_prompt = engine.info.max_prompt_tokens
    results: list[Result | None] = [None] * len(records)
    runnable: list[tuple[tuple[str, int], int]] = []  # (order key, index)
    requests = []
    for i, p in enumerate(records):
        rid = p.request.record_id
        if p.request.texts is not None or p.request.image is not None:
            # embedding and image requests are truncated to the model's window, never refused;
            # the engine tokenizes a call's requests together and orders them itself
            requests.append(p.request)
            size = sum(len(t) for t in p.request.texts or (p.request.prompt or "",))
            runnable.append((("", size), i))
            continue
        shown = len(p.request.input_images)
        if shown > engine.info.max_images:
            results[i] = Result.failed(rid, ErrorCode.TOO_MANY_IMAGES, _too_many(engine, shown))
            continue
        try:
            ids = engine.prompt_tokens(p.request)  # on this thread: beside the device
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
    # An exception here is an engine or infrastructure failure, not a bad record: it fails the
    # shard (Beam retries the bundle; a rerun resumes) rather than erroring its records.
    outputs = loop.submit(ordered, on_result).wait() if ordered else []
    if len(outputs) != len(ordered):
        raise RuntimeError(
            f"engine {engine.name} returned {len(outputs)} results for {len(ordered)} requests"
        )
    for j, out in zip(order, outputs, strict=True):
        i = runnable[j][1]
        if out.record_id != records[i].request.record_id:
            raise RuntimeError(f"engine {engine.name} returned results out of order")
        results[i] = out
    charge = sum((r.charge for r in outputs), Charge())
    extra, load_seconds = loop.charge_once() if ordered else (Counters(), 0.0)
    delta = extra + Counters(
        busy_seconds=charge.busy_seconds,
        prefill_seconds=charge.prefill_seconds,
        computed_token_slots=charge.computed_token_slots,
        useful_token_slots=charge.useful_token_slots,
    )
    return Served([r for r in results if r is not None], delta, load_seconds)
