"""The bounded-memory duplicate-id check: exact repeats across files, chunks and buckets."""

from __future__ import annotations

import random

from hyperbatch import storage
from hyperbatch.runners import dedup


def test_repeats_are_every_sighting_but_the_first(tmp_path, monkeypatch):
    monkeypatch.setattr(dedup.SightingWriter, "CHUNK", 7)  # force many flushes
    job_dir = str(tmp_path / "job")
    rng = random.Random(3)
    sightings = []  # (file, line, id)
    for file_index in range(3):
        for line in range(1, 41):
            sightings.append((file_index, line, f"id-{rng.randrange(60)}"))
    for file_index in range(3):
        writer = dedup.SightingWriter(job_dir, file_index, n_buckets=4)
        for f, line, rid in sightings:
            if f == file_index:
                writer.add(rid, line)
        writer.close()

    found = sorted(r for b in range(4) for r in dedup.find_repeats(job_dir, b))

    first: dict[str, tuple[int, int]] = {}
    expected = []
    for f, line, rid in sorted(sightings):
        if rid in first:
            expected.append((f, line, *first[rid]))
        else:
            first[rid] = (f, line)
    assert found == sorted(expected)
    assert len(found) == 120 - len(first)
    assert len(list(storage.list_prefix(str(tmp_path / "job" / "_plan")))) > 4
    dedup.cleanup(job_dir)
    assert list(storage.list_prefix(str(tmp_path / "job" / "_plan"))) == []


def test_bucket_count_grows_with_input_and_is_capped():
    assert dedup.bucket_count(0) == 1
    assert dedup.bucket_count(dedup.INPUT_BYTES_PER_BUCKET * 3) == 4
    assert dedup.bucket_count(1 << 50) == dedup.MAX_BUCKETS
