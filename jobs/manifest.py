"""Shard statistics and the cost manifest built from them (JSON + Avro twin).

A shard's statistics are written in its commit marker, so a resumed job's manifest still counts
the work (and the accelerator time) of shards committed by an earlier attempt. A shard a budget
stop left unserved (``ShardStats.left``) is never committed: the manifest counts its records as
``records_left`` and the job ends ``STOPPED_BUDGET``; a rerun with a higher cap serves them.

The manifest also keeps what ``hyperbatch estimate`` calibrates on: the time spent loading and
warming up, prefilling, and a histogram of completion lengths (``Lengths``).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from hyperbatch import storage, timestamps
from hyperbatch.jobs import layout, pricing
from hyperbatch.jobs.lease import Attempt
from hyperbatch.jobs.spec import JobSpec
from hyperbatch.schemas import avro
from hyperbatch.schemas.records import Counters, FinishReason, Result

Status = Literal["SUCCEEDED", "FAILED", "STOPPED_BUDGET"]


def length_bucket(n: int) -> int:
    """A completion length rounded down to 8 buckets per octave (exact below 32): a histogram
    of lengths stays small (about 60 keys up to 4096 tokens) and within 12% of the truth."""
    if n < 32:
        return n
    shift = n.bit_length() - 4
    return (n >> shift) << shift


CUT = "cut"  # the key of a limit's answers that were cut at it


@dataclasses.dataclass
class Lengths:
    """Completion lengths of served records, grouped by their limit (``max_tokens``, bucketed):
    in each group, a histogram of the lengths of answers that ended by themselves (``stop``),
    and how many were cut at the limit (``cut``: their natural length is at least that).
    ``hyperbatch estimate`` predicts a record's length from the group nearest its limit.

    As data (the manifest's ``completion_lengths``): ``{"<limit>": {"<length>": n, ...,
    "cut": n}}``, buckets from ``length_bucket``."""

    stop: dict[int, dict[int, int]] = dataclasses.field(default_factory=dict)
    cut: dict[int, int] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, served: Iterable[tuple[Any, Result]]) -> Lengths:
        """From (parsed record, result) pairs: the record's request says its max_tokens."""
        out = cls()
        for parsed, r in served:
            if r.embeddings is not None or r.finish_reason is None:
                continue
            n = r.usage.completion_tokens
            if r.finish_reason == FinishReason.LENGTH:  # cut: at max_tokens or the KV cache
                limit = length_bucket(n)
                out.cut[limit] = out.cut.get(limit, 0) + 1
            else:
                limit = length_bucket(parsed.request.sampling.max_tokens)
                group = out.stop.setdefault(limit, {})
                group[length_bucket(n)] = group.get(length_bucket(n), 0) + 1
        return out

    def __add__(self, other: Lengths) -> Lengths:
        stop = {k: dict(v) for k, v in self.stop.items()}
        for limit, group in other.stop.items():
            stop[limit] = dict(Counter(stop.get(limit, {})) + Counter(group))
        return Lengths(stop, dict(Counter(self.cut) + Counter(other.cut)))

    def __bool__(self) -> bool:
        return bool(self.stop or self.cut)

    def to_dict(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for limit in sorted(set(self.stop) | set(self.cut)):
            group = {str(k): v for k, v in sorted(self.stop.get(limit, {}).items())}
            if self.cut.get(limit):
                group[CUT] = self.cut[limit]
            out[str(limit)] = group
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Mapping[str, int]] | None) -> Lengths:
        out = cls()
        for limit, group in (d or {}).items():
            if not limit.isdigit():
                continue  # not a limit (a histogram of another version)
            stops = {int(k): int(v) for k, v in group.items() if k.isdigit()}
            if stops:
                out.stop[int(limit)] = stops
            if group.get(CUT):
                out.cut[int(limit)] = int(group[CUT])
        return out


@dataclasses.dataclass
class ShardStats:
    """One shard's outcome: its counters, its errors by code, when it ran; kept in its marker.

    ``left`` > 0: the shard was not served (a budget stop) and is not committed; these are its
    records, still to serve."""

    shard: str
    counters: Counters = dataclasses.field(default_factory=Counters)
    errors_by_code: dict[str, int] = dataclasses.field(default_factory=dict)
    started_at: float = 0.0
    finished_at: float = 0.0
    resumed: bool = False  # committed by an earlier attempt
    attempt: str | None = None  # the attempt (run) that committed it
    lengths: Lengths = dataclasses.field(default_factory=Lengths)
    left: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "counters": self.counters.to_dict(),
            "errors_by_code": dict(self.errors_by_code),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "resumed": self.resumed,
            "attempt": self.attempt,
            "lengths": self.lengths.to_dict(),
            "left": self.left,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShardStats:
        # markers of earlier versions kept the counters flat beside the shard's name
        counters = Counters.from_dict(d.get("counters", d))
        return cls(
            shard=d["shard"],
            counters=counters,
            errors_by_code=dict(d.get("errors_by_code") or {}),
            started_at=float(d.get("started_at", 0.0)),
            finished_at=float(d.get("finished_at", 0.0)),
            resumed=bool(d.get("resumed", False)),
            attempt=d.get("attempt"),
            lengths=Lengths.from_dict(d.get("lengths")),
            left=int(d.get("left", 0)),
        )


def charged_seconds(
    shards: Iterable[ShardStats], attempts: Sequence[Attempt] = (), attempt: str | None = None
) -> tuple[float, float]:
    """(accelerator seconds, of which lost): what the committed ``shards`` were charged, plus,
    for every earlier attempt that did not succeed (failed, killed), the part of its wall time
    its own committed shards do not cover -- work that was paid for and lost. ``attempt`` is the
    running one (not an earlier one)."""
    committed = [s for s in shards if not s.left]
    by_attempt: dict[str, float] = {}
    for s in committed:
        if s.attempt:
            by_attempt[s.attempt] = by_attempt.get(s.attempt, 0.0) + s.counters.accelerator_seconds
    lost = sum(
        max(0.0, a.wall_seconds - by_attempt.get(a.attempt, 0.0))
        for a in attempts
        if a.attempt != attempt and a.outcome != "succeeded"
    )
    return sum(s.counters.accelerator_seconds for s in committed) + lost, lost


def build(
    *,
    job_id: str,
    spec: JobSpec,
    shards: Iterable[ShardStats],
    wall_seconds: float,
    results_glob: str,
    errors_glob: str,
    vectors_glob: str | None = None,
    images_glob: str | None = None,
    attempts: Sequence[Attempt] = (),
    attempt: str | None = None,
) -> dict[str, Any]:
    """The manifest of a job from its committed shards and its attempts.

    ``wall_seconds`` is this attempt's; ``attempts`` are every attempt recorded (``attempt`` is
    this one). Accelerator time is ``charged_seconds``. Throughput is the work done over the
    wall time of all attempts. Shards left by a budget stop count as ``records_left``.
    """
    every = list(shards)
    ordered = sorted((s for s in every if not s.left), key=lambda s: s.shard)
    records_left = sum(s.left for s in every)
    t = Counters.sum([s.counters for s in ordered])

    price = pricing.price_for(spec.accelerator, spec.spot, spec.usd_per_accelerator_hour)
    count = spec.accelerator_count
    accel_s, lost = charged_seconds(ordered, attempts, attempt)
    cost = pricing.cost_usd(price, accel_s, count)
    total_wall = sum(a.wall_seconds for a in attempts if a.attempt != attempt) + wall_seconds
    records_in, results, errors = t.records, t.results, t.errors
    p_tok, c_tok = t.prompt_tokens, t.completion_tokens
    by_code: Counter[str] = Counter()
    for s in ordered:
        by_code.update(s.errors_by_code)
    error_rate = errors / records_in if records_in else 0.0
    # a job none of whose records could be served never succeeds, whatever max_error_rate says
    failed = error_rate > spec.max_error_rate or (records_in > 0 and results == 0)
    status: Status = "FAILED" if failed else "STOPPED_BUDGET" if records_left else "SUCCEEDED"
    lengths = sum((s.lengths for s in ordered), Lengths())

    total_tok = p_tok + c_tok
    busy, prefill = t.busy_seconds, t.prefill_seconds
    if busy > 0 and 0 < prefill <= busy:
        # One accelerator serves both: input tokens pay for the time spent on prompts.
        input_share, cost_split = prefill / busy, "measured_prefill_time"
    else:
        input_share, cost_split = (p_tok / total_tok if total_tok else 0.0), "token_share"

    def per_1k(usd: float, tokens: int) -> float:
        return round(usd / tokens * 1000, 8) if tokens else 0.0

    return {
        "job_id": job_id,
        "job_name": spec.name,
        "spec_digest": spec.digest,
        "status": status,
        "created_at": timestamps.now("seconds"),
        "model": spec.model,
        "engine": spec.engine,
        "task": spec.task,
        "accelerator_type": spec.accelerator,
        "accelerator_count": count,
        "pricing_model": price.pricing_model,
        "usd_per_accelerator_hour": price.usd_per_accelerator_hour,
        "price_table_date": price.table_date,
        "price_table_source": price.table_source,
        "wall_seconds": round(wall_seconds, 3),
        "total_wall_seconds": round(total_wall, 3),
        "attempts": max(1, len({a.attempt for a in attempts} | ({attempt} if attempt else set()))),
        "accelerator_seconds_lost": round(lost, 3),
        "accelerator_seconds": round(accel_s, 3),
        "accelerator_busy_seconds": round(busy, 3),
        "records_in": records_in,
        "results": results,
        "errors": errors,
        "errors_by_code": dict(sorted(by_code.items())),
        "prompt_tokens": p_tok,
        "completion_tokens": c_tok,
        "cached_tokens": t.cached_tokens,
        "output_tokens_per_second": round(c_tok / total_wall, 3) if total_wall else 0.0,
        "total_tokens_per_second": round(total_tok / total_wall, 3) if total_wall else 0.0,
        "cost_usd": round(cost, 8),
        "cost_split": cost_split,
        "usd_per_1k_input_tokens": per_1k(cost * input_share, p_tok),
        "usd_per_1k_output_tokens": per_1k(cost * (1 - input_share), c_tok),
        "usd_per_1k_tokens": per_1k(cost, total_tok),
        "usd_per_1m_tokens": round(cost / total_tok * 1e6, 6) if total_tok else 0.0,
        "embeddings": t.embeddings,
        "images": t.images,
        "images_per_second": round(t.images / total_wall, 4) if total_wall else 0.0,
        "seconds_per_image": round(accel_s / t.images, 4) if t.images else 0.0,
        "usd_per_1k_images": round(cost / t.images * 1000, 6) if t.images else 0.0,
        "input_images": t.input_images,
        "image_tokens": t.image_tokens,
        "usd_per_1k_input_images": round(cost / t.input_images * 1000, 6)
        if t.input_images
        else 0.0,
        "padding_waste_percent": round(100 * t.padding_waste, 3),
        "engine_compilations": t.compilations,
        "max_cost_usd": spec.max_cost_usd,
        "records_left": records_left,
        "shards_left": sum(1 for s in every if s.left),
        "batch_size": spec.batch_size,
        "load_seconds": round(t.load_seconds + t.warmup_seconds, 3),
        "accelerator_prefill_seconds": round(t.prefill_seconds, 3),
        "completion_lengths": lengths.to_dict(),
        "shards": [
            {
                "shard": s.shard,
                "records_in": s.counters.records,
                "results": s.counters.results,
                "errors": s.counters.errors,
                "prompt_tokens": s.counters.prompt_tokens,
                "completion_tokens": s.counters.completion_tokens,
                "accelerator_seconds": round(s.counters.accelerator_seconds, 3),
                "cost_usd": round(
                    pricing.cost_usd(price, s.counters.accelerator_seconds, count), 8
                ),
            }
            for s in ordered
        ],
        "outputs": {
            "results": results_glob,
            "errors": errors_glob,
            "vectors": vectors_glob,
            "images": images_glob,
        },
    }


def write(job_dir: str, manifest: Mapping[str, Any]) -> str:
    """Write manifest.json and its Avro twin; returns the JSON path."""
    folder = layout.JobFolder(job_dir)
    path = folder.manifest_json
    storage.write_bytes(
        folder.manifest_avro,
        avro.to_avro_bytes("cost_manifest", [manifest]),
        content_type="application/avro",
    )
    storage.write_bytes(
        path, json.dumps(manifest, indent=2).encode() + b"\n", content_type="application/json"
    )
    return path


def read(path: str) -> dict[str, Any]:
    """A manifest from a manifest.json / manifest.avro path, or from a job directory."""
    if not (path.endswith(".json") or path.endswith(".avro")):
        path = layout.JobFolder(path).manifest_json
    data = storage.read_bytes(path)
    if path.endswith(".avro"):
        return avro.from_avro_bytes(data)[0]
    return json.loads(data)
