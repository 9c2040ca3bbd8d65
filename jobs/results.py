"""Where a job's outputs are, and its result or error records as JSON lines.

Only committed shards count: a shard's files are listed once its commit marker exists, so a
running job shows the shards finished so far and never a half-written or superseded file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from hyperbatch import storage
from hyperbatch.jobs.layout import JobFolder
from hyperbatch.jobs.store import JobStore, Record
from hyperbatch.schemas import avro
from hyperbatch.schemas.formats import FORMATS
from hyperbatch.schemas.vectors import VECTOR_WRITERS


def locate(store: JobStore, record: Record) -> dict[str, Any]:
    spec = store.spec(record.job_id)
    suffix = FORMATS[spec.input_format].result_suffix
    writer = VECTOR_WRITERS.get(spec.vector_output)
    vector_suffix = writer.suffix if writer else None
    folder = JobFolder(record.status.job_dir)
    committed = [folder.shard(name, suffix, vector_suffix) for name in folder.committed_shards()]
    manifest = folder.manifest_json
    return {
        "job_id": record.job_id,
        "state": record.state.value,
        "job_dir": folder.path,
        "results": folder.results_glob(suffix),
        "errors": folder.errors_glob(),
        "manifest": manifest if storage.exists(manifest) else None,
        "shards_committed": len(committed),
        "result_files": [s.results for s in committed if storage.exists(s.results)],
        "error_files": [s.errors for s in committed if storage.exists(s.errors)],
        "vectors": folder.vectors_glob(vector_suffix) if vector_suffix else None,
        "vector_files": [s.vectors for s in committed if s.vectors and storage.exists(s.vectors)],
        "summary": record.status.manifest.to_json() if record.status.manifest else None,
    }


def stream(where: Mapping[str, Any], errors: bool = False) -> Iterator[str]:
    """Each record of the committed result (or error) files, as one JSON line."""
    for path in where["error_files" if errors else "result_files"]:
        data = storage.read_bytes(path)
        if path.endswith(".avro"):
            for rec in avro.from_avro_bytes(data):
                yield json.dumps(rec, default=str)
        else:
            for line in data.decode("utf-8").splitlines():
                if line.strip():
                    yield line
