"""Where a job's outputs are, and its result or error records as JSON lines.

Only committed shards count: a shard's files are listed once its commit marker exists, so a
running job shows the shards finished so far and never a half-written or superseded file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from hyperbatch import storage
from hyperbatch.jobs.store import JobStore, Record

RESULTS_DIR, ERRORS_DIR, COMMITS_DIR = "results", "errors", "_commits"  # as runners.shards


def locate(store: JobStore, record: Record) -> dict[str, Any]:
    from hyperbatch.schemas.formats import FORMATS

    spec = store.spec(record.job_id)
    suffix = FORMATS[spec.input_format].result_suffix
    job_dir = record.doc["job_dir"]
    committed = sorted(
        f.path.rsplit("/", 1)[-1][: -len(".json")]
        for f in storage.list_prefix(storage.join(job_dir, COMMITS_DIR) + "/")
        if f.path.endswith(".json")
    )
    results = [storage.join(job_dir, RESULTS_DIR, f"{s}{suffix}") for s in committed]
    errors = [
        p for s in committed if storage.exists(p := storage.join(job_dir, ERRORS_DIR, f"{s}.jsonl"))
    ]
    manifest = storage.join(job_dir, "manifest.json")
    return {
        "job_id": record.job_id,
        "state": record.doc["state"],
        "job_dir": job_dir,
        "results": storage.join(job_dir, RESULTS_DIR, f"*{suffix}"),
        "errors": storage.join(job_dir, ERRORS_DIR, "*.jsonl"),
        "manifest": manifest if storage.exists(manifest) else None,
        "shards_committed": len(committed),
        "result_files": results,
        "error_files": errors,
        "summary": record.doc.get("manifest"),
    }


def stream(where: Mapping[str, Any], errors: bool = False) -> Iterator[str]:
    """Each record of the committed result (or error) files, as one JSON line."""
    from hyperbatch.schemas import avro

    for path in where["error_files" if errors else "result_files"]:
        data = storage.read_bytes(path)
        if path.endswith(".avro"):
            for rec in avro.from_avro_bytes(data):
                yield json.dumps(rec, default=str)
        else:
            for line in data.decode("utf-8").splitlines():
                if line.strip():
                    yield line
