"""The job-wide duplicate-id check in bounded memory: id hashes partitioned into buckets on storage.

Planning writes one fixed-size entry per record (a 128-bit hash of its id, its file and line)
into one of ``n_buckets`` hash buckets, as ``<job>/_plan/ids/<bucket>/<file>.bin``. Once every
file is planned, each bucket is loaded on its own as a numpy array, sorted, and scanned for
hashes seen more than once: every sighting but the first (by file, then line) is a repeat.
Memory is one bucket, and the bucket count grows with the input, so it stays bounded whatever
the input size (a GroupByKey over ids would hold every id in the local runner's memory).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np

from hyperbatch import storage
from hyperbatch.jobs.layout import JobFolder

# a 128-bit id hash as two words, then where the record is: 28 bytes, sorted in place
ENTRY = np.dtype([("h0", "<u8"), ("h1", "<u8"), ("file", "<u4"), ("line", "<u8")])
INPUT_BYTES_PER_BUCKET = 128 << 20  # ~0.5-2 M records of typical size: 15-50 MiB per bucket
MAX_BUCKETS = 1024


def bucket_count(total_input_bytes: int) -> int:
    return int(min(MAX_BUCKETS, 1 + total_input_bytes // INPUT_BYTES_PER_BUCKET))


def id_hash(record_id: str) -> bytes:
    return hashlib.blake2b(record_id.encode("utf-8"), digest_size=16).digest()


def _bucket_dir(job_dir: str, bucket: int) -> str:
    return storage.join(JobFolder(job_dir).plan_ids, f"{bucket:04d}")


class SightingWriter:
    """Collects one input file's id sightings; publishes them by bucket, a chunk at a time."""

    CHUNK = 1 << 18  # entries buffered before a flush: 7 MiB

    def __init__(self, job_dir: str, file_index: int, n_buckets: int):
        self.job_dir, self.file_index, self.n_buckets = job_dir, file_index, n_buckets
        self._entries = np.empty(self.CHUNK, dtype=ENTRY)
        self._buckets = np.empty(self.CHUNK, dtype=np.uint32)
        self._n = 0
        self._flushes = 0

    def add(self, record_id: str, line: int) -> None:
        h = id_hash(record_id)
        h0, h1 = int.from_bytes(h[:8], "little"), int.from_bytes(h[8:], "little")
        self._entries[self._n] = (h0, h1, self.file_index, line)
        self._buckets[self._n] = h0 % self.n_buckets
        self._n += 1
        if self._n == self.CHUNK:
            self._flush()

    def _flush(self) -> None:
        entries, buckets = self._entries[: self._n], self._buckets[: self._n]
        for b in np.unique(buckets):
            name = f"{self.file_index:06d}-{self._flushes:05d}.bin"
            path = storage.join(_bucket_dir(self.job_dir, int(b)), name)
            storage.write_bytes(path, entries[buckets == b].tobytes())
        self._n = 0
        self._flushes += 1

    def close(self) -> None:
        if self._n:
            self._flush()


def find_repeats(job_dir: str, bucket: int) -> Iterator[tuple[int, int, int, int]]:
    """``(file, line, first_file, first_line)`` for every repeated id in this bucket."""
    parts = storage.list_prefix(_bucket_dir(job_dir, bucket) + "/")
    paths = [f.path for f in parts]
    if not paths:
        return
    entries = np.concatenate([np.frombuffer(storage.read_bytes(p), dtype=ENTRY) for p in paths])
    # by hash, then by (file, line): the first of each run of equal hashes is the one served
    entries.sort(order=["h0", "h1", "file", "line"])
    h0, h1 = entries["h0"], entries["h1"]
    repeat = np.zeros(len(entries), dtype=bool)
    repeat[1:] = (h0[1:] == h0[:-1]) & (h1[1:] == h1[:-1])
    first = 0
    for i in np.flatnonzero(repeat):
        if not repeat[i - 1]:
            first = i - 1
        yield (int(entries["file"][i]), int(entries["line"][i]),
               int(entries["file"][first]), int(entries["line"][first]))  # fmt: skip


def cleanup(job_dir: str) -> None:
    """Remove the plan's id buckets (after the job; a rerun plans again)."""
    for f in list(storage.list_prefix(JobFolder(job_dir).plan_ids + "/")):
        storage.delete(f.path)
