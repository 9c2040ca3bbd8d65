"""What a job will cost before it runs: records, tokens, accelerator-hours, dollars, wall time.

``estimate(spec)`` reads the job's input -- all of it when small, else a uniform sample of
records (streaming, memory bounded by the sample) -- and tokenizes the sampled prompts with the
model's own tokenizer (no weights loaded). Completion lengths and throughput come from the job
store's manifests of earlier jobs of the same model, engine and accelerator when there are any
(``calibrations``), else from ``max_tokens`` and the throughput table (``jobs.throughput``).
Every figure is a range (low, expected, high) and the estimate says what it is based on.

How the time is modelled (``jobs.throughput`` has the formula): prompt tokens not served from
the prefix cache are prefilled; decode time follows the engine's scheduler, simulated over the
predicted completion lengths (``decode_calls``: static slots refilled as answers finish, so a
few long answers keep a batch's idle slots busy, which is what a job pays for -- but a job's
tail, once few slots are busy, decodes in the engine's smaller tail batch); prefill is
counted the same way, in the token slots the engine computes: the prompts admitted together
padded to whole calls (``prefill_slots``: a job of many short refills pays for padding that
one of long prompts does not); plus the model load and warmup per worker, and host overhead.
An earlier job's rates are read in the same units (its prompts taken as equally long: a
manifest keeps their total). A completion's length is predicted from the
histogram earlier jobs of the model recorded (``manifest.Lengths``): an answer that stopped by
itself has its length; one cut at its limit is known only to be at least that long, so for a
larger ``max_tokens`` it spans a range. Without earlier jobs the expected length is
``max_tokens`` (a conservative figure) and the low end is one token.

``check_budget`` is the launch gate for ``max_cost_usd``: a job whose *low* estimate is above
its cap is refused (``BudgetExceeded``, a SpecError) before any accelerator time is spent.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import heapq
import json
import logging
import math
import os
import random
import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from hyperbatch import accelerators, storage
from hyperbatch.engines import models, registry
from hyperbatch.jobs import pricing, throughput
from hyperbatch.jobs.layout import JobFolder
from hyperbatch.jobs.manifest import Lengths
from hyperbatch.jobs.spec import JobSpec, SpecError
from hyperbatch.jobs.status import JobState
from hyperbatch.jobs.store import JobStore
from hyperbatch.schemas.formats import FORMATS, Location, Parsed
from hyperbatch.schemas.formats.base import JsonLinesFormat
from hyperbatch.schemas.records import Request, RequestError, TaskKind

log = logging.getLogger(__name__)

#: records tokenized at most (a uniform sample beyond this)
SAMPLE_RECORDS = 2000
#: inputs up to this size are read whole (exact record count); larger JSON lines are sampled
#: at random byte offsets
FULL_READ_BYTES = 64 << 20
#: earlier jobs whose manifests calibrate an estimate (newest first)
HISTORY_JOBS = 5
#: decode is simulated over at most this many records; a larger job scales linearly from it
SIMULATED_RECORDS = 100_000
#: the relative spread of rates measured by one earlier job (this CPU drifts by +-20%)
MIN_SPREAD = 0.15
#: a small job's decode is simulated this many times (lengths drawn in other orders) and
#: averaged: with few records, which answers share the last batch moves the total by ~10%
ROUNDS = 5


class EstimateUnavailable(RuntimeError):
    """The job cannot be estimated here; the message says why and what would make it possible."""


class BudgetExceeded(SpecError):
    """The job's low estimate is above its ``max_cost_usd``: refused before launch."""

    def __init__(self, problems: Sequence[str], source: str | None, estimate: Estimate):
        super().__init__(problems, source)
        self.estimate = estimate


# --------------------------------------------------------------------------- ranges


@dataclasses.dataclass(frozen=True)
class Span:
    """A quantity's range: low <= expected <= high."""

    low: float
    expected: float
    high: float

    def scaled(self, k: float) -> Span:
        return Span(self.low * k, self.expected * k, self.high * k)

    def to_dict(self, digits: int = 6) -> dict[str, float]:
        return {
            "low": round(self.low, digits),
            "expected": round(self.expected, digits),
            "high": round(self.high, digits),
        }


# --------------------------------------------------------------------------- reading the input


@dataclasses.dataclass
class InputSample:
    """The input's size and a uniform sample of its raw records."""

    files: int
    bytes: int
    records: int  # exact when ``exact``, else estimated from bytes per sampled record
    exact: bool
    sample: list[tuple[Location, Any]]

    @property
    def scale(self) -> float:
        """Records of the job per sampled record."""
        return self.records / len(self.sample) if self.sample else 0.0


def read_input(spec: JobSpec, sample_records: int = SAMPLE_RECORDS, seed: int = 0) -> InputSample:
    """Stream the input once and keep a uniform sample (reservoir) of at most
    ``sample_records`` records; JSON lines larger than FULL_READ_BYTES are sampled at random
    byte offsets instead (the record after a random offset is a uniform pick for records of
    independent lengths), their count estimated from the sampled records' bytes."""
    files = storage.glob(spec.input)
    total = sum(f.size for f in files)
    fmt = FORMATS[spec.input_format]
    rng = random.Random(seed)
    if total > FULL_READ_BYTES and isinstance(fmt, JsonLinesFormat):
        return _sample_offsets(files, total, sample_records, rng)
    sample: list[tuple[Location, Any]] = []
    seen = 0
    for info in files:
        with storage.open_read(info.path) as f:
            position = 1
            for unit in fmt.units(f):
                for i, raw in enumerate(unit.raws):
                    seen += 1
                    item = (Location(info.path, position + i), raw)
                    if len(sample) < sample_records:
                        sample.append(item)
                    else:
                        j = rng.randrange(seen)
                        if j < sample_records:
                            sample[j] = item
                position += unit.positions
    return InputSample(len(files), total, seen, True, sample)


def _sample_offsets(
    files: Sequence[storage.FileInfo], total: int, n: int, rng: random.Random
) -> InputSample:
    starts = []
    at = 0
    for f in files:
        starts.append(at)
        at += f.size
    by_file: dict[int, list[int]] = {}
    for offset in sorted(rng.randrange(total) for _ in range(n)):
        i = bisect.bisect_right(starts, offset) - 1
        by_file.setdefault(i, []).append(offset - starts[i])
    sample: list[tuple[Location, Any]] = []
    sizes: list[int] = []
    for i, offsets in by_file.items():  # each file opened once, read forward at its offsets
        info = files[i]
        with storage.open_read(info.path, chunk_size=1 << 16) as stream:
            for at in offsets:
                stream.seek(at)
                if at > 0:
                    stream.readline()  # the rest of the line the offset fell in
                line = stream.readline()
                if line.strip():
                    sample.append((Location(info.path, 0), line))  # its line is not known
                    sizes.append(len(line))
    if not sample:
        return InputSample(len(files), total, 0, False, [])
    records = round(total / (sum(sizes) / len(sizes)))
    return InputSample(len(files), total, records, False, sample)


# --------------------------------------------------------------------------- the model


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What the estimate needs of the model, read from its files without loading weights."""

    params: int | None  # None: not known (an engine without a model)
    context_length: int | None
    count_tokens: Any  # Request -> prompt token ids (raises RequestError)
    prefix_tokens: Any  # (Request, ids) -> leading tokens a prefix cache can share


@functools.lru_cache(maxsize=8)
def _gguf_facts(path: str) -> tuple[Any, int, int | None]:
    try:
        from hyperbatch.engines.jax_llm.tokenizer import ChatTokenizer
        from hyperbatch.engines.jax_llm.weights import gguf_metadata

        reader = models.open_gguf(path)
    except ImportError as e:
        raise EstimateUnavailable(
            f"reading the model's tokenizer needs {e.name}: install the engine's extra "
            "(pip install 'hyperbatch[jax]')"
        ) from e
    meta = gguf_metadata(reader)
    params = sum(int(t.n_elements) for t in reader.tensors)
    arch = meta.get("general.architecture", "llama")
    context = meta.get(f"{arch}.context_length")
    return ChatTokenizer.from_gguf(meta), params, int(context) if context else None


@functools.lru_cache(maxsize=8)
def _hf_facts(path: str) -> tuple[Any, int, int | None]:
    try:
        from hyperbatch.engines.jax_llm.tokenizer import ChatTokenizer
    except ImportError as e:
        raise EstimateUnavailable(
            f"reading the model's tokenizer needs {e.name}: install the engine's extra "
            "(pip install 'hyperbatch[jax]' or 'hyperbatch[vllm]')"
        ) from e
    params = 0
    for name in sorted(os.listdir(path)):
        if name.endswith(".safetensors"):
            with open(os.path.join(path, name), "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            for key, t in header.items():
                if key != "__metadata__":
                    params += math.prod(t["shape"])
    context = None
    config = os.path.join(path, "config.json")
    if os.path.isfile(config):
        with open(config) as f:
            context = json.load(f).get("max_position_embeddings")
    return ChatTokenizer.from_hf_dir(path), params, context


def model_facts(spec: JobSpec) -> ModelFacts:
    if not registry.entry(spec.engine).needs_model:
        # an engine without a model (tests) is light: count tokens with the engine itself
        from hyperbatch.engines.base import EngineConfig

        engine = registry.engine_class(spec.engine, spec.task)(
            EngineConfig(model=spec.model, batch_size=spec.batch_size,
                         options=dict(spec.engine_options))
        )  # fmt: skip
        return ModelFacts(None, None, engine.prompt_tokens, lambda r, ids: 0)
    from hyperbatch.engines import models

    local = models.resolve_model(spec.model)
    tok, params, context = (_gguf_facts if local.format == "gguf" else _hf_facts)(local.path)

    def count(request: Request) -> list[int]:
        if request.texts is not None:
            return [t for text in request.texts for t in tok.tokenizer.encode(text).ids]
        if request.messages is not None:
            ids: list[int] = tok.encode_chat(request.messages)
            return ids
        return list(tok.encode_prompt(request.prompt or ""))

    def prefix(request: Request, ids: Sequence[int]) -> int:
        return tok.chat_prefix(request.messages, ids) if request.messages else 0

    return ModelFacts(params, context, count, prefix)


# --------------------------------------------------------------------------- the engine's scheduler


class DecodeCalls(NamedTuple):
    calls: int  # decode calls
    rounds: int  # admission rounds
    slot_calls: int  # the slots those calls computed: the batch, or the tail batch's


def _slot_calls(finishes: Sequence[int], t0: int, t1: int, slots: int, tail: int) -> int:
    """Slots computed by calls t0 .. t1-1 while the busy slots finish at ``finishes``: the
    whole batch, or ``tail`` when at most that many are busy."""
    if not tail:
        return (t1 - t0) * slots
    ends = sorted(f for f in finishes if f > t0)
    total, t, done = 0, t0, 0
    while t < t1:
        while done < len(ends) and ends[done] <= t:
            done += 1
        until = min(ends[done] if done < len(ends) else t1, t1)
        total += (until - t) * (tail if len(ends) - done <= tail else slots)
        t = until
    return total


def decode_calls(
    lengths: Sequence[int],
    slots: int,
    steps: int,
    refill_min: int,
    groups: list[int] | None = None,
    tail: int = 0,
) -> DecodeCalls:
    """The decode calls, admission rounds and slots computed of a static-batch scheduler
    serving ``lengths`` (completion tokens, in the order served): ``slots`` slots; each call
    advances every busy slot ``steps`` tokens (the first token comes from prefill); waiting
    requests are admitted when no slot is busy or at least ``min(refill_min, waiting)`` are
    free; a call with at most ``tail`` slots busy computes ``tail`` slots (0: always all).
    Mirrors ``engines.jax_llm.scheduler``; with steps=1, refill_min=1 it is continuous batching.
    ``groups``, if given, gets how many requests each admission round took (they are
    prefilled together)."""
    active: list[int] = []  # the call count at which each busy slot finishes
    t, i, n, rounds, computed = 0, 0, len(lengths), 0, 0
    while i < n or active:
        while active and active[0] <= t:
            heapq.heappop(active)
        free, waiting = slots - len(active), n - i
        if waiting and free and (not active or free >= min(refill_min, waiting)):
            rounds += 1
            if groups is not None:
                groups.append(min(free, waiting))
            for length in lengths[i : i + min(free, waiting)]:
                calls = -(-max(0, length - 1) // steps)
                if calls:
                    heapq.heappush(active, t + calls)
            i += min(free, waiting)
            continue
        if not active:
            continue
        if waiting:  # the next admission: when enough slots are free
            need = min(refill_min, waiting) - free
            until = max(t + 1, heapq.nsmallest(need, active)[-1])
        else:
            until = max(active)
        computed += _slot_calls(active, t, until, slots, tail)
        t = until
        if not waiting:
            active = []
    return DecodeCalls(t, rounds, computed)


@dataclasses.dataclass(frozen=True)
class Scheduling:
    """The job's engine configuration as the decode simulation sees it."""

    static_slots: bool
    slots: int
    steps: int
    refill_min: int
    prefix_min: int
    prefix_max: int
    prefix_block: int
    # prefill as the JAX engine computes it (static shapes): each admission round's prompts
    # packed into calls of ``prefill_tokens`` (``packed``: the CPU kernel), or each prompt
    # padded to its length bucket, ``prefill_tokens // bucket`` rows a call; 0: no padding
    prefill_tokens: int = 0
    packed: bool = True
    buckets: tuple[int, ...] = ()
    tail: int = 0  # decode calls with at most this many busy slots compute only those


def _default_buckets(max_seq_len: int, block: int) -> tuple[int, ...]:
    """The JAX engine's prompt-length buckets: 16, 64, 256, ... up to the cache length."""
    seq = -(-max_seq_len // block) * block
    out, b = [], 16
    while b < max(16, seq):
        out.append(b)
        b *= 4
    return (*out, max(16, seq))


def scheduling(spec: JobSpec) -> Scheduling:
    profile = throughput.PROFILES.get(spec.engine, throughput.EngineProfile(False, 1, 1))
    options = registry.options_class(spec.engine, spec.task).parse(spec.engine_options)
    steps = int(getattr(options, "decode_steps", None) or profile.default_decode_steps)
    rows = getattr(options, "prefix_cache_rows", 1)
    prefill_tokens = int(getattr(options, "prefill_tokens", 0) or 0) if profile.static_slots else 0
    attention = getattr(options, "attention", "auto")
    packed = accelerators.get(spec.accelerator).kind == "cpu" and attention != "xla"
    refill_for = getattr(options, "refill_min_for", None)  # the JAX engine's admission rule
    refill = refill_for(spec.batch_size, packed) if refill_for else (
        getattr(options, "refill_min_free", None) or 1
    )  # fmt: skip
    buckets: tuple[int, ...] = ()
    if prefill_tokens and not packed:
        given = getattr(options, "prefill_buckets", None)
        block = int(getattr(options, "attention_block", 64))
        buckets = tuple(sorted(given)) if given else _default_buckets(
            spec.max_seq_len or 1024, block
        )  # fmt: skip
    tail_for = getattr(options, "tail_batch_for", None)  # the JAX engine's tail batch
    tail = tail_for(spec.batch_size, packed and bool(prefill_tokens)) if tail_for else 0
    return Scheduling(
        static_slots=profile.static_slots,
        slots=spec.batch_size,
        steps=steps,
        refill_min=int(refill),
        prefix_min=int(getattr(options, "prefix_min_tokens", 1)) if rows else 1 << 30,
        prefix_max=int(getattr(options, "prefix_max_tokens", None) or 512),
        prefix_block=profile.prefix_block,
        prefill_tokens=prefill_tokens,
        packed=packed,
        buckets=buckets,
        tail=int(tail),
    )


def prefill_slots(uncached: Sequence[int], sched: Scheduling) -> float:
    """Token slots the engine computes to prefill one admission round's prompts (their
    uncached tokens): padded to whole calls (packed) or to length buckets; no padding
    modelled for an engine without static shapes."""
    total = sum(uncached)
    p = sched.prefill_tokens
    if not p or not total:
        return float(total)
    if sched.packed:
        return float(-(-total // p) * p)
    counts: dict[int, int] = {}
    for n in uncached:
        if n:
            t = next((b for b in sched.buckets if b >= n), sched.buckets[-1])
            counts[t] = counts.get(t, 0) + 1
    slots = 0
    for t, k in counts.items():
        rows = max(1, p // t)
        slots += -(-k // rows) * rows * t
    return float(slots)


def work_units(
    lengths: Sequence[int], uncached: Sequence[int], sched: Scheduling
) -> tuple[float, float]:
    """(decode units, prefill units) the engine computes to serve records with these completion
    lengths and uncached prompt tokens, in this order. Decode: static slots compute the whole
    batch every call; continuous batching computes the tokens generated. Prefill: each
    admission round's prompts as ``prefill_slots`` pads them, or (packed) all rounds' prompts
    as one, since a round's part-full last call is carried into the next."""
    if not sched.static_slots:
        return float(sum(lengths)), float(sum(uncached))
    n = len(lengths)
    m = min(n, SIMULATED_RECORDS)
    groups: list[int] = []
    computed = decode_calls(
        lengths[:m], sched.slots, sched.steps, sched.refill_min, groups, sched.tail
    ).slot_calls
    prefill, i = 0.0, 0
    if sched.packed:  # a round's part-full last call goes on in the next: padded once at the end
        prefill = prefill_slots(uncached[: sum(groups)], sched)
    for k in () if sched.packed else groups:
        prefill += prefill_slots(uncached[i : i + k], sched)
        i += k
    scale = n / m if m else 0.0
    return computed * sched.steps * scale, prefill * scale


def decode_units(lengths: Sequence[int], sched: Scheduling) -> float:
    """Decode token slots the engine computes for ``lengths`` (see ``work_units``)."""
    return work_units(lengths, [0] * len(lengths), sched)[0]


# --------------------------------------------------------------------------- completion lengths


def _representative(bucket: int) -> int:
    if bucket < 32:
        return bucket
    width = 1 << (bucket.bit_length() - 4)
    return bucket + width // 2


class LengthModel:
    """Predicts completion lengths from earlier jobs' histograms (``manifest.Lengths``): a
    record's length is drawn from the group of earlier answers whose limit (max_tokens) is
    nearest its own -- records given similar limits tend to get similar answers -- cycling
    through the group in a shuffled order, so the predicted lengths follow the group's
    distribution without a random draw's noise."""

    def __init__(self, lengths: Lengths, seed: int = 0):
        rng = random.Random(seed)
        self.groups: dict[int, list[int | None]] = {}  # limit -> lengths (None: cut at it)
        for limit in sorted(set(lengths.stop) | set(lengths.cut)):
            pool: list[int | None] = [
                _representative(b) for b, c in lengths.stop.get(limit, {}).items()
                for _ in range(c)
            ]  # fmt: skip
            pool += [None] * lengths.cut.get(limit, 0)
            rng.shuffle(pool)
            self.groups[limit] = pool  # a bucket's lower end: exact for 24, 64, 96, 128, 256...
        self.stops = sorted(v for pool in self.groups.values() for v in pool if v is not None)
        self.n = sum(len(p) for p in self.groups.values())
        self._next = {g: rng.randrange(len(pool)) for g, pool in self.groups.items()}
        self._rng = rng

    def draw(self, limit: int) -> tuple[int, int, int]:
        """(low, expected, high) length of one completion whose limit is ``limit``."""
        group = min(self.groups, key=lambda g: (abs(math.log(g / max(1, limit))), -g))
        pool = self.groups[group]
        i = self._next[group]
        self._next[group] = i + 1
        length = pool[i % len(pool)]
        if length is not None:
            v = min(length, limit)
            return v, v, v
        if group >= limit:
            return limit, limit, limit
        # at least ``group`` long: as long as an answer that ran past it and stopped, if any
        longer = self.stops[bisect.bisect_left(self.stops, group) :]
        mid = min(self._rng.choice(longer), limit) if longer else limit
        return group, mid, limit


# --------------------------------------------------------------------------- calibration


@dataclasses.dataclass(frozen=True)
class Calibration:
    """An earlier job's manifest, read as rates for this model, engine and accelerator."""

    job_id: str
    manifest: Mapping[str, Any]
    spec: JobSpec


def calibrations(spec: JobSpec, root: str | None, limit: int = HISTORY_JOBS) -> list[Calibration]:
    """Earlier jobs in the job store at ``root`` (default: the spec's output) of the same model
    and engine that ran to their manifest, newest first (any accelerator: lengths do not depend
    on it; ``rates`` keeps those of the job's accelerator)."""
    store = JobStore(root or spec.output)
    found: list[Calibration] = []
    states = [JobState.SUCCEEDED, JobState.STOPPED_BUDGET]
    for record in store.list(states=states):
        try:
            earlier = store.spec(record.job_id)
        except (SpecError, storage.StorageError, OSError, ValueError, KeyError):
            continue  # a job recorded by another version, or half-written: not a calibration
        if (earlier.model, earlier.engine, earlier.task) != (spec.model, spec.engine, spec.task):
            continue
        path = JobFolder(record.status.job_dir).manifest_json
        try:
            m = json.loads(storage.read_bytes(path))
        except (storage.StorageError, OSError, ValueError):
            continue
        if "load_seconds" not in m or not m.get("results"):
            continue  # written before estimates were calibrated on manifests
        found.append(Calibration(record.job_id, m, earlier))
        if len(found) >= limit:
            break
    return found


def _lengths_of(c: Calibration) -> list[int]:
    """An earlier job's completion lengths (as its histogram keeps them)."""
    model = LengthModel(Lengths.from_dict(c.manifest.get("completion_lengths")))
    return [v if v is not None else g for g, pool in model.groups.items() for v in pool]


def _mean_units(lengths: list[int], uncached: int, sched: Scheduling) -> tuple[float, float]:
    """(decode, prefill) units of serving ``lengths`` with ``uncached`` prompt tokens spread
    evenly over them (an earlier job's manifest has only the total), in an order that says
    nothing of them (a few shuffles, averaged, for a small job)."""
    rounds = ROUNDS if len(lengths) <= SIMULATED_RECORDS // 10 else 1
    n = len(lengths)
    each = [uncached // n + (1 if i < uncached % n else 0) for i in range(n)] if n else []
    decode = prefill = 0.0
    for seed in range(rounds):
        order = list(lengths)
        random.Random(seed).shuffle(order)
        d, p = work_units(order, each, sched)
        decode, prefill = decode + d / rounds, prefill + p / rounds
    return decode, prefill


def measured_rates(c: Calibration) -> throughput.Rates | None:
    """The rates an earlier job ran at (None if it measured too little to tell)."""
    m = c.manifest
    busy = float(m["accelerator_busy_seconds"])
    prefill = float(m.get("accelerator_prefill_seconds", 0.0))
    fixed = float(m["load_seconds"])
    uncached = max(0, int(m["prompt_tokens"]) - int(m["cached_tokens"]))
    if busy <= 0:  # an engine that does not time its calls: all the time held was work
        busy, prefill = float(m["accelerator_seconds"]) - fixed, 0.0
    if busy <= 0:
        return None
    if c.spec.task == TaskKind.EMBEDDING:
        rate = int(m["prompt_tokens"]) / busy
        decode, prefill_rate = rate, rate
    else:
        # in the units the engine computes: token slots, padding and idle slots included
        units, prefill_units = _mean_units(_lengths_of(c), uncached, scheduling(c.spec))
        if 0 < prefill < busy and prefill_units:
            decode, prefill_rate = units / (busy - prefill), prefill_units / prefill
        else:  # one rate for both (the engine does not time prefill apart)
            decode = prefill_rate = (units + prefill_units) / busy
        if units <= 0:
            return None
    overhead = max(0.0, float(m["accelerator_seconds"]) - busy - fixed) / busy
    return throughput.Rates(decode, prefill_rate, fixed, overhead, "", MIN_SPREAD)


def history_rates(spec: JobSpec, found: Sequence[Calibration]) -> throughput.Rates | None:
    """Rates from the earlier jobs on this job's accelerator (scaled to its batch and count)."""
    same = [c for c in found if c.spec.accelerator == spec.accelerator]
    kind = accelerators.get(spec.accelerator).kind
    measured = []
    for c in same:
        r = measured_rates(c)
        if r is None:
            continue
        chips = spec.accelerator_count / c.spec.accelerator_count
        slots = throughput.batch_factor(kind, spec.batch_size, c.spec.batch_size)
        measured.append((c, dataclasses.replace(
            r, decode_tokens_per_s=r.decode_tokens_per_s * chips * slots,
            prefill_tokens_per_s=r.prefill_tokens_per_s * chips,
        )))  # fmt: skip
    if not measured:
        return None
    weights = [
        float(c.manifest["accelerator_seconds"]) for c, _ in measured
    ]  # the longer, the surer

    def mean(f: str) -> float:
        return sum(w * getattr(r, f) for w, (_, r) in zip(weights, measured, strict=True)) / sum(
            weights
        )

    decodes = [r.decode_tokens_per_s for _, r in measured]
    spread = max(MIN_SPREAD, (max(decodes) - min(decodes)) / (2 * mean("decode_tokens_per_s")))
    ids = ", ".join(c.job_id for c, _ in measured)
    return throughput.Rates(
        mean("decode_tokens_per_s"),
        mean("prefill_tokens_per_s"),
        sum(r.fixed_seconds for _, r in measured) / len(measured),
        mean("overhead"),
        f"measured by {len(measured)} earlier job(s) of {spec.model} on {spec.engine}/"
        f"{spec.accelerator} in this job store: {ids}",
        spread,
    )


# --------------------------------------------------------------------------- the estimate


@dataclasses.dataclass(frozen=True)
class Estimate:
    job_id: str
    spec: JobSpec
    workers: int
    records: int
    records_exact: bool
    records_sampled: int
    invalid_records: int  # of ``records``: would be error records (no accelerator time)
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: Span
    accelerator_seconds: Span
    wall_seconds: Span
    cost_usd: Span
    price: pricing.Price
    rates: throughput.Rates
    basis: Mapping[str, str]

    @property
    def accelerator_hours(self) -> Span:
        return self.accelerator_seconds.scaled(1 / 3600)

    @property
    def within_budget(self) -> bool | None:
        cap = self.spec.max_cost_usd
        return None if cap is None else self.cost_usd.low <= cap

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "model": self.spec.model,
            "engine": self.spec.engine,
            "accelerator": self.spec.accelerator,
            "accelerator_count": self.spec.accelerator_count,
            "workers": self.workers,
            "records": self.records,
            "records_exact": self.records_exact,
            "records_sampled": self.records_sampled,
            "invalid_records": self.invalid_records,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "completion_tokens": self.completion_tokens.to_dict(0),
            "accelerator_seconds": self.accelerator_seconds.to_dict(3),
            "accelerator_hours": self.accelerator_hours.to_dict(6),
            "wall_seconds": self.wall_seconds.to_dict(3),
            "cost_usd": self.cost_usd.to_dict(8),
            "usd_per_accelerator_hour": self.price.usd_per_accelerator_hour,
            "pricing_model": self.price.pricing_model,
            "price_table_date": self.price.table_date,
            "max_cost_usd": self.spec.max_cost_usd,
            "within_budget": self.within_budget,
            "rates": {
                "decode_tokens_per_s": round(self.rates.decode_tokens_per_s, 3),
                "prefill_tokens_per_s": round(self.rates.prefill_tokens_per_s, 3),
                "fixed_seconds_per_worker": round(self.rates.fixed_seconds, 3),
                "overhead": round(self.rates.overhead, 4),
                "spread": round(self.rates.spread, 3),
            },
            "basis": dict(self.basis),
        }

    def per_record_seconds(self) -> float:
        """Expected accelerator seconds per record, load and warmup excluded."""
        fixed = self.workers * self.rates.fixed_seconds
        return max(0.0, self.accelerator_seconds.expected - fixed) / max(1, self.records)


@dataclasses.dataclass
class _Served:
    """One sampled record as the engine would see it."""

    prompt: int
    prefix: tuple[int, ...]
    limit: int
    choices: int


def _prepare(
    sample: InputSample, spec: JobSpec, facts: ModelFacts, sched: Scheduling
) -> tuple[list[_Served], int]:
    """The sampled records that would be served (and how many would be error records)."""
    fmt = FORMATS[spec.input_format]
    task, defaults = TaskKind(spec.task), spec.default_sampling
    context = spec.max_seq_len or min(facts.context_length or 1024, 1024)
    served, invalid = [], 0
    for location, raw in sample.sample:
        item = fmt.parse(raw, location, task, defaults)
        if not isinstance(item, Parsed):
            invalid += 1
            continue
        request = item.request
        try:
            ids = facts.count_tokens(request)
        except RequestError:
            invalid += 1
            continue
        if task == TaskKind.EMBEDDING:
            served.append(_Served(len(ids), (), 0, 1))
            continue
        if facts.params is not None and len(ids) > context - 1:
            invalid += 1  # prompt_too_long
            continue
        n = facts.prefix_tokens(request, ids)
        n = n // sched.prefix_block * sched.prefix_block
        prefix = tuple(ids[:n]) if sched.prefix_min <= n <= sched.prefix_max else ()
        limit = request.sampling.max_tokens
        if facts.params is not None:
            limit = min(limit, context - len(ids))
        served.append(_Served(len(ids), prefix, limit, int(getattr(request.sampling, "n", 1))))
    return served, invalid


def estimate(
    spec: JobSpec,
    *,
    root: str | None = None,
    workers: int = 1,
    sample_records: int = SAMPLE_RECORDS,
    job_id: str | None = None,
) -> Estimate:
    """Estimate ``spec``'s cost; ``root`` is the job store whose manifests calibrate it (default
    the spec's output). Raises EstimateUnavailable when nothing says how fast this engine runs
    on this accelerator."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    sample = read_input(spec, sample_records)
    facts = model_facts(spec)
    sched = scheduling(spec)
    found = calibrations(spec, root)
    rates = history_rates(spec, found)
    if rates is None:
        if spec.task == TaskKind.EMBEDDING:
            raise EstimateUnavailable(
                "the throughput table has no rows for embedding jobs, and no earlier embedding "
                f"job of {spec.model} on {spec.engine}/{spec.accelerator} is in the job store; "
                "run one small job first: its manifest calibrates every later estimate"
            )
        if facts.params is None:
            raise EstimateUnavailable(
                f"engine {spec.engine} has no model size to look up in the throughput table, "
                "and no earlier job of it is in the job store; run one first"
            )
        try:
            rates = throughput.lookup(spec.engine, spec.accelerator, facts.params,
                                      spec.accelerator_count, spec.batch_size)  # fmt: skip
        except throughput.NoThroughput as e:
            raise EstimateUnavailable(str(e)) from e
    served, invalid = _prepare(sample, spec, facts, sched)
    scale = sample.scale
    records = sample.records
    # a worker that gets no shard never loads the model: at most one worker per shard
    asked = workers
    shards = max(min(sample.files, records), -(-records // spec.records_per_shard))
    workers = max(1, min(workers, shards))
    prompt = sum(s.prompt * s.choices for s in served) * scale
    seen: set[tuple[int, ...]] = set()
    cached = 0.0
    for s in served:
        if s.prefix:
            cached += len(s.prefix) * s.choices * scale
            if s.prefix not in seen:  # computed once (per worker), then reused
                seen.add(s.prefix)
                cached -= len(s.prefix) * workers
    cached = max(0.0, cached)

    # completion lengths: low / expected / high per served record, in the order served
    history = sum((Lengths.from_dict(c.manifest.get("completion_lengths")) for c in found),
                  Lengths())  # fmt: skip
    # Served in an order that says nothing of answer lengths (the adapter sorts by prompt), as
    # the calibration assumes too: a few orders, averaged, for a small job.
    rounds = ROUNDS if len(served) * scale <= SIMULATED_RECORDS // 10 else 1
    tokens, units = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]  # low, expected, high: sums over rounds
    prefills = [0.0, 0.0, 0.0]  # prefill token slots, padding included
    model: LengthModel | None = None
    for seed in range(rounds if spec.task != TaskKind.EMBEDDING else 0):
        model = LengthModel(history, seed) if history else None
        order = list(served)
        random.Random(seed).shuffle(order)
        drawn: tuple[list[int], list[int], list[int]] = ([], [], [])
        fresh: list[int] = []  # uncached prompt tokens per slot (choices share one prefill)
        for s in order:
            for choice in range(s.choices):
                for side, v in zip(drawn, model.draw(s.limit) if model else
                                   (1, s.limit, s.limit), strict=True):  # fmt: skip
                    side.append(v)
                fresh.append(s.prompt - len(s.prefix) if choice == 0 else 0)
        for k, lengths in enumerate(drawn):
            # the sample stands for the whole job: repeated to its size (or what is simulated)
            total = round(len(lengths) * scale)
            simulated = min(total, SIMULATED_RECORDS)
            tokens[k] += sum(lengths) * scale / rounds
            if total:
                d, p = work_units(_tile(lengths, simulated), _tile(fresh, simulated), sched)
                units[k] += d * total / simulated / rounds
                prefills[k] += p * total / simulated / rounds
    # each distinct shared prefix is prefilled once per worker (into the prefix store)
    prefills = [p + sum(map(len, seen)) * workers for p in prefills]
    completion = Span(*tokens)

    def busy(k: int, rate_factor: float) -> float:
        if spec.task == TaskKind.EMBEDDING:
            return prompt / (rates.decode_tokens_per_s * rate_factor)
        seconds = prefills[k] / rates.prefill_tokens_per_s + units[k] / rates.decode_tokens_per_s
        return seconds / rate_factor

    fixed = rates.fixed_seconds
    spread = rates.spread
    busy_s = Span(busy(0, 1 + spread), busy(1, 1.0), busy(2, 1 - min(spread, 0.9)))
    work = busy_s.scaled(1 + rates.overhead)
    accel = Span(*(workers * fixed + w for w in (work.low, work.expected, work.high)))
    wall = Span(*(fixed + w / workers for w in (work.low, work.expected, work.high)))
    price = pricing.price_for(spec.accelerator, spec.spot, spec.usd_per_accelerator_hour)
    cost = accel.scaled(price.usd_per_accelerator_hour * spec.accelerator_count / 3600)

    how_read = (
        f"all {records} records of {sample.files} file(s) read"
        if sample.exact and len(sample.sample) == records
        else f"{len(sample.sample)} records sampled uniformly of "
        + (f"{records}" if sample.exact else f"about {records} (from {sample.bytes} bytes)")
    )
    if spec.task == TaskKind.EMBEDDING:
        how_long = "an embedding job: no completion tokens (its time is the prompt tokens')"
    elif model is not None:
        how_long = (
            f"observed: {model.n} completions of {len(found)} earlier job(s) of {spec.model} "
            f"({', '.join(c.job_id for c in found)}), drawn for each record from those whose "
            "max_tokens was nearest its own, capped by it"
        )
    else:
        how_long = (
            "no earlier job of this model in the job store: expected = every answer runs to "
            "its max_tokens, low = one token each"
        )
    basis = {
        "input": how_read + f"; prompts tokenized with {spec.model}'s tokenizer"
        if facts.params is not None
        else how_read + f"; prompts tokenized by engine {spec.engine}",
        "completion_lengths": how_long,
        "throughput": rates.basis,
        "price": f"${price.usd_per_accelerator_hour}/h per accelerator ({price.pricing_model}, "
        f"{price.table_source}, {price.table_date}) x {spec.accelerator_count}",
        "workers": f"{workers} worker(s), each loading the model once "
        f"({fixed:.1f} s) and sharing the work"
        + (
            f" (of {asked} asked for: the job has about {shards} shard(s))"
            if asked > workers
            else ""
        ),
    }
    return Estimate(
        job_id=job_id or spec.job_id,
        spec=spec,
        workers=workers,
        records=records,
        records_exact=sample.exact,
        records_sampled=len(sample.sample),
        invalid_records=round(invalid * scale),
        prompt_tokens=round(prompt),
        cached_tokens=round(cached),
        completion_tokens=completion,
        accelerator_seconds=accel,
        wall_seconds=wall,
        cost_usd=cost,
        price=price,
        rates=rates,
        basis=basis,
    )


def _tile(values: list[int], n: int) -> list[int]:
    """``values`` repeated to ``n`` items."""
    if not values:
        return []
    return (values * -(-n // len(values)))[:n]


def _money(usd: float) -> str:
    return f"${usd:.6f}" if usd < 1 else f"${usd:,.2f}"


def check_budget(
    spec: JobSpec, *, root: str | None = None, workers: int = 1, source: str | None = None
) -> Estimate | None:
    """The launch gate of ``max_cost_usd``: None without a cap; the estimate when the job may
    run; BudgetExceeded when even its low estimate is above the cap. EstimateUnavailable when
    it cannot be estimated (the caller decides: the running job still enforces the cap)."""
    cap = spec.max_cost_usd
    if cap is None:
        return None
    est = estimate(spec, root=root, workers=workers)
    if est.within_budget is False:
        raise refusal(est, source)
    return est


def refusal(est: Estimate, source: str | None = None) -> BudgetExceeded:
    """The refusal of a job whose low estimate ``est`` is above its ``max_cost_usd``: the
    estimate in the message (records, tokens, accelerator-hours, $ range, what it is based on)."""
    cap, c = est.spec.max_cost_usd, est.cost_usd
    assert cap is not None
    return BudgetExceeded(
        [
            f"max_cost_usd: {_money(cap)} is below even the low estimate of this job: "
            f"{_money(c.low)} (expected {_money(c.expected)}, up to {_money(c.high)}; "
            f"{est.records} records, {est.prompt_tokens} prompt tokens, "
            f"{est.completion_tokens.expected:.0f} completion tokens expected, "
            f"{est.accelerator_hours.expected:.4f} accelerator-hours; throughput "
            f"{est.basis['throughput'].split(';')[0]}). Raise max_cost_usd, or serve fewer "
            "records (`hyperbatch estimate` shows the whole estimate)"
        ],
        source,
        est,
    )


def iter_lines(est: Estimate) -> Iterator[tuple[str, str]]:
    """The estimate as (label, text) lines, for the CLI's table."""
    c, a, w = est.cost_usd, est.accelerator_hours, est.wall_seconds
    t = est.completion_tokens
    records = f"{est.records}" + ("" if est.records_exact else " (estimated)")
    if est.invalid_records:
        records += f", of which about {est.invalid_records} would be error records"
    yield "records", records
    yield "prompt tokens", f"{est.prompt_tokens} ({est.cached_tokens} from the prefix cache)"
    yield "completion tokens", f"{t.expected:.0f} expected ({t.low:.0f} - {t.high:.0f})"
    yield "accelerator-hours", f"{a.expected:.4f} ({a.low:.4f} - {a.high:.4f})"
    yield "cost", f"{_money(c.expected)} ({_money(c.low)} - {_money(c.high)})"
    yield (
        "wall time",
        (
            f"{_duration(w.expected)} ({_duration(w.low)} - {_duration(w.high)}) on "
            f"{est.workers} worker(s)"
        ),
    )
    if est.spec.max_cost_usd is not None:
        verdict = "within it" if est.within_budget else "REFUSED: even the low estimate is above"
        yield "budget", f"max_cost_usd {_money(est.spec.max_cost_usd)}: {verdict}"
    for key, text in est.basis.items():
        yield f"based on ({key})", text


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
