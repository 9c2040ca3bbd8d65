"""Shard statistics and the cost manifest built from them (JSON + Avro twin).

A shard's statistics are written in its commit marker, so a resumed job's manifest still counts
the work (and the accelerator time) of shards committed by an earlier attempt.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hyperbatch import storage, timestamps
from hyperbatch.jobs import layout, pricing
from hyperbatch.jobs.lease import Attempt
from hyperbatch.jobs.spec import JobSpec
from hyperbatch.schemas import avro
from hyperbatch.schemas.records import Counters


@dataclasses.dataclass
class ShardStats:
    """One shard's outcome: its counters, its errors by code, when it ran; kept in its marker."""

    shard: str
    counters: Counters = dataclasses.field(default_factory=Counters)
    errors_by_code: dict[str, int] = dataclasses.field(default_factory=dict)
    started_at: float = 0.0
    finished_at: float = 0.0
    resumed: bool = False  # committed by an earlier attempt
    attempt: str | None = None  # the attempt (run) that committed it

    def to_dict(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "counters": self.counters.to_dict(),
            "errors_by_code": dict(self.errors_by_code),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "resumed": self.resumed,
            "attempt": self.attempt,
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
        )


def build(
    *,
    job_id: str,
    spec: JobSpec,
    shards: Iterable[ShardStats],
    wall_seconds: float,
    results_glob: str,
    errors_glob: str,
    vectors_glob: str | None = None,
    attempts: Sequence[Attempt] = (),
    attempt: str | None = None,
) -> dict[str, Any]:
    """The manifest of a job from its committed shards and its attempts.

    ``wall_seconds`` is this attempt's; ``attempts`` are every attempt recorded (``attempt`` is
    this one). Accelerator time is what the committed shards were charged, plus, for every
    earlier attempt that did not succeed (failed, killed), the part of its wall time its own
    committed shards do not cover: work that was paid for and lost. Throughput is the work done
    over the wall time of all attempts.
    """
    ordered = sorted(shards, key=lambda s: s.shard)
    t = Counters.sum([s.counters for s in ordered])

    price = pricing.price_for(spec.accelerator, spec.spot, spec.usd_per_accelerator_hour)
    count = spec.accelerator_count
    committed_by: dict[str, float] = {}
    for s in ordered:
        if s.attempt:
            committed_by[s.attempt] = (
                committed_by.get(s.attempt, 0.0) + s.counters.accelerator_seconds
            )
    lost = sum(
        max(0.0, a.wall_seconds - committed_by.get(a.attempt, 0.0))
        for a in attempts
        if a.attempt != attempt and a.outcome != "succeeded"
    )
    accel_s = t.accelerator_seconds + lost
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
    status = "FAILED" if failed else "SUCCEEDED"

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
        "padding_waste_percent": round(100 * t.padding_waste, 3),
        "engine_compilations": t.compilations,
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
        "outputs": {"results": results_glob, "errors": errors_glob, "vectors": vectors_glob},
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
