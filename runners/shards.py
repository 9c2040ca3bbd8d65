"""Shards: deterministic cuts of the input files, read by byte range, committed atomically.

Planning streams each input file once (memory bounded by one line or Avro block) and cuts it
into shards of ``records_per_shard`` records at unit boundaries; a shard is (file, byte range,
first line). The same files and settings always give the same shards, so a rerun finds the
shards an earlier attempt committed. A shard's result and error files are written whole, then
its commit marker (``_commits/<shard>.json``, with its statistics); a shard counts as done only
when its marker exists, and a rerun rewrites an uncommitted shard's files under the same names,
so nothing is ever duplicated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hyperbatch import storage
from hyperbatch.jobs.layout import ShardFiles
from hyperbatch.jobs.manifest import ShardStats
from hyperbatch.schemas.formats import InputFormat, Location


class InputChanged(RuntimeError):
    """An input file differs from the one an earlier attempt of this job committed from."""


@dataclasses.dataclass(frozen=True)
class Shard:
    name: str  # "part-<file>-<chunk>", stable across reruns
    file_index: int
    path: str
    generation: int
    size: int
    header_length: int
    start: int  # byte range [start, end) of whole units
    end: int
    first_line: int  # 1-based position of the range's first unit
    records: int

    def fingerprint(self) -> dict[str, Any]:
        """Where the shard's bytes are; with ``range_digest`` of those bytes, what they were.
        (Not the file's generation or mtime: an identical copy is the same input.)"""
        return {"path": self.path, "size": self.size, "start": self.start, "end": self.end}


@dataclasses.dataclass(frozen=True)
class IdSighting:
    """A record id seen while planning, for the job-wide duplicate check."""

    record_id: str
    file_index: int
    line: int


def plan_file(
    file_index: int, info: storage.FileInfo, fmt: InputFormat, records_per_shard: int
) -> Iterator[Shard | IdSighting]:
    with storage.open_read(info.path) as f:
        header = fmt.header_length(f)
        f.seek(0)
        chunk, start, first, records, position = 0, None, 1, 0, 1
        end = header
        for unit in fmt.units(f):
            if start is None:
                start, first = unit.start, position
            for i, raw in enumerate(unit.raws):
                rid = fmt.record_id(raw)
                if rid is not None:
                    yield IdSighting(rid, file_index, position + i)
            records += len(unit.raws)
            position += unit.positions
            end = unit.end
            if records >= records_per_shard:
                yield _shard(file_index, chunk, info, header, start, end, first, records)
                chunk, start, records = chunk + 1, None, 0
        if records:
            yield _shard(file_index, chunk, info, header, start, end, first, records)


def _shard(file_index, chunk, info, header, start, end, first, records) -> Shard:
    return Shard(
        name=f"part-{file_index:05d}-{chunk:05d}",
        file_index=file_index,
        path=info.path,
        generation=info.generation,
        size=info.size,
        header_length=header,
        start=start,
        end=end,
        first_line=first,
        records=records,
    )


def _read_range(shard: Shard) -> tuple[bytes, bytes]:
    with storage.open_read(shard.path) as f:
        header = f.read(shard.header_length) if shard.header_length else b""
        f.seek(shard.start)
        return header, f.read(shard.end - shard.start)


def range_digest(header: bytes, data: bytes) -> str:
    return hashlib.sha256(header + data).hexdigest()


def read_shard(shard: Shard, fmt: InputFormat) -> tuple[list[tuple[Location, Any]], str]:
    """The shard's raw records with their locations (memory: one shard's bytes), and the
    digest of the bytes they came from (kept in the commit marker)."""
    header, data = _read_range(shard)
    records = [
        (Location(shard.path, shard.first_line + offset), raw)
        for offset, raw in fmt.records(header, data)
    ]
    return records, range_digest(header, data)


# --------------------------------------------------------------------------- outputs


def committed_stats(shard: Shard, outputs: ShardFiles) -> ShardStats | None:
    """The stats of an earlier attempt's commit of this shard, or None if not committed."""
    if not storage.exists(outputs.marker):
        return None
    marker = json.loads(storage.read_bytes(outputs.marker))
    source = {k: v for k, v in marker["source"].items() if k in ("path", "size", "start", "end")}
    changed = source != shard.fingerprint()
    if not changed and "sha256" in marker["source"]:
        changed = range_digest(*_read_range(shard)) != marker["source"]["sha256"]
    if changed:
        raise InputChanged(
            f"{shard.path} is not what shard {shard.name} of this job was committed from (its "
            "size or the bytes of that shard differ); run it as a new job (change its name or "
            "pass --job-id) instead of resuming"
        )
    stats = ShardStats.from_dict(marker["stats"])
    stats.resumed = True
    return stats


def commit(
    shard: Shard,
    outputs: ShardFiles,
    results: bytes,
    errors: bytes,
    stats: ShardStats,
    result_content_type: str,
    digest: str,
    vectors: tuple[bytes, str] | None = None,
    images: Sequence[tuple[str, bytes, str]] = (),
    index: bytes | None = None,
) -> None:
    """Publish the shard's files (each atomically), then its marker: the commit point.
    ``vectors`` is an embedding shard's vector file and its content type; ``images`` an image
    shard's files (path, bytes, content type; written first, in parallel) and ``index`` their
    index."""
    if images:
        with ThreadPoolExecutor(max_workers=min(8, len(images))) as pool:
            list(pool.map(lambda f: storage.write_bytes(f[0], f[1], content_type=f[2]), images))
    if outputs.index is not None:
        if index:
            storage.write_bytes(outputs.index, index, content_type="application/jsonl")
        else:
            storage.delete(outputs.index)
    if results:
        storage.write_bytes(outputs.results, results, content_type=result_content_type)
    else:
        storage.delete(outputs.results)  # a stale file from an earlier uncommitted attempt
    if outputs.vectors is not None:
        data, content_type = vectors or (b"", "")
        if data:
            storage.write_bytes(outputs.vectors, data, content_type=content_type)
        else:
            storage.delete(outputs.vectors)
    if errors:
        storage.write_bytes(outputs.errors, errors, content_type="application/jsonl")
    else:
        storage.delete(outputs.errors)
    source = {**shard.fingerprint(), "sha256": digest}
    marker = {"shard": shard.name, "source": source, "stats": stats.to_dict()}
    storage.write_bytes(
        outputs.marker, json.dumps(marker).encode(), content_type="application/json"
    )
