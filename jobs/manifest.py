"""Shard statistics and the cost manifest built from them (JSON + Avro twin).

A shard's statistics are written in its commit marker, so a resumed job's manifest still counts
the work (and the accelerator time) of shards committed by an earlier attempt.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from hyperbatch import storage
from hyperbatch.jobs import pricing
from hyperbatch.schemas import avro

MANIFEST_JSON = "manifest.json"
MANIFEST_AVRO = "manifest.avro"


@dataclasses.dataclass
class ShardStats:
    shard: str
    records_in: int = 0
    results: int = 0
    errors: int = 0
    errors_by_code: dict[str, int] = dataclasses.field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    accelerator_seconds: float = 0.0  # held by this shard's worker, load/warmup included
    busy_seconds: float = 0.0  # inside engine.generate
    prefill_seconds: float = 0.0  # part of busy_seconds spent on prompts
    computed_token_slots: int = 0
    useful_token_slots: int = 0
    compilations: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    resumed: bool = False  # committed by an earlier attempt

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShardStats:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _rfc3339(t: float | None = None) -> str:
    when = dt.datetime.fromtimestamp(t, dt.UTC) if t is not None else dt.datetime.now(dt.UTC)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def build(
    *,
    job_id: str,
    spec: Any,  # jobs.spec.JobSpec (not imported: keeps this module free of the spec's deps)
    shards: Iterable[ShardStats],
    wall_seconds: float,
    results_glob: str,
    errors_glob: str,
) -> dict[str, Any]:
    ordered = sorted(shards, key=lambda s: s.shard)

    def total(field: str) -> float:
        return sum(getattr(s, field) for s in ordered)

    price = pricing.price_for(spec.accelerator, spec.spot, spec.usd_per_accelerator_hour)
    count = spec.accelerator_count
    accel_s = total("accelerator_seconds")
    cost = pricing.cost_usd(price, accel_s, count)
    records_in = int(total("records_in"))
    results, errors = int(total("results")), int(total("errors"))
    p_tok, c_tok = int(total("prompt_tokens")), int(total("completion_tokens"))
    by_code: Counter[str] = Counter()
    for s in ordered:
        by_code.update(s.errors_by_code)
    computed = total("computed_token_slots")
    useful = total("useful_token_slots")
    error_rate = errors / records_in if records_in else 0.0
    status = "SUCCEEDED" if error_rate <= spec.max_error_rate else "FAILED"

    total_tok = p_tok + c_tok
    busy, prefill = total("busy_seconds"), total("prefill_seconds")
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
        "created_at": _rfc3339(),
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
        "accelerator_seconds": round(accel_s, 3),
        "accelerator_busy_seconds": round(busy, 3),
        "records_in": records_in,
        "results": results,
        "errors": errors,
        "errors_by_code": dict(sorted(by_code.items())),
        "prompt_tokens": p_tok,
        "completion_tokens": c_tok,
        "cached_tokens": int(total("cached_tokens")),
        "output_tokens_per_second": round(c_tok / wall_seconds, 3) if wall_seconds else 0.0,
        "total_tokens_per_second": round(total_tok / wall_seconds, 3) if wall_seconds else 0.0,
        "cost_usd": round(cost, 8),
        "cost_split": cost_split,
        "usd_per_1k_input_tokens": per_1k(cost * input_share, p_tok),
        "usd_per_1k_output_tokens": per_1k(cost * (1 - input_share), c_tok),
        "usd_per_1k_tokens": per_1k(cost, total_tok),
        "padding_waste_percent": round(100 * (1 - useful / computed), 3) if computed else 0.0,
        "engine_compilations": int(total("compilations")),
        "shards": [
            {
                "shard": s.shard,
                "records_in": s.records_in,
                "results": s.results,
                "errors": s.errors,
                "prompt_tokens": s.prompt_tokens,
                "completion_tokens": s.completion_tokens,
                "accelerator_seconds": round(s.accelerator_seconds, 3),
                "cost_usd": round(pricing.cost_usd(price, s.accelerator_seconds, count), 8),
            }
            for s in ordered
        ],
        "outputs": {"results": results_glob, "errors": errors_glob},
    }


def write(job_dir: str, manifest: Mapping[str, Any]) -> str:
    """Write manifest.json and its Avro twin; returns the JSON path."""
    path = storage.join(job_dir, MANIFEST_JSON)
    storage.write_bytes(
        storage.join(job_dir, MANIFEST_AVRO),
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
        path = storage.join(path, MANIFEST_JSON)
    data = storage.read_bytes(path)
    if path.endswith(".avro"):
        return avro.from_avro_bytes(data)[0]
    return json.loads(data)
