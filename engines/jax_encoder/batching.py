"""Static-shape batches, two ways.

Packed (``packed_batches``, the BERT family's default): sequences laid back to back into rows of
one width (the model's max_seq_length), best fit longest first, a fixed number of rows per call:
one compiled program whatever the lengths, and only the end of each row is padding.

Bucketed (``batches``): sequences sorted by length, cut into batches, each padded to the smallest
length bucket that holds its longest row and to that bucket's fixed number of rows.

Sorting longest first makes batches tight (neighbours have near-equal lengths) and leaves the one
partial batch at the short end, where its empty rows cost least. A bucket's row count is fixed
(``rows_for(bucket)``: one batch size for all, or a token budget divided by the bucket), so every
batch has one of ``len(buckets)`` shapes and the number of compiled programs never depends on
the data.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import numpy as np


class Batch(NamedTuple):
    rows: np.ndarray  # indices into the input, <= rows_for(bucket) of them, longest first
    bucket: int  # padded length
    tokens: np.ndarray  # [rows_for(bucket), bucket] int32, right-padded with pad_id
    lengths: np.ndarray  # [rows_for(bucket)] int32 (0 for the empty rows of a partial batch)


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    i = int(np.searchsorted(buckets, length))
    if i == len(buckets):
        raise ValueError(
            f"a sequence of {length} tokens is longer than the largest bucket ({buckets[-1]}); "
            "tokenize with the encoder (it truncates to max_seq_length)"
        )
    return int(buckets[i])


def plan(
    lengths: np.ndarray, rows_for: Callable[[int], int], buckets: Sequence[int]
) -> list[tuple[np.ndarray, int]]:
    """(rows, bucket) per batch, longest rows first; ``rows_for(bucket)``: a batch's row count."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    out, start = [], 0
    while start < len(order):
        bucket = bucket_for(int(lengths[order[start]]), buckets)
        rows = order[start : start + rows_for(bucket)]
        out.append((rows, bucket))
        start += len(rows)
    return out


def batches(
    ids: Sequence[np.ndarray],
    rows_for: Callable[[int], int],
    buckets: Sequence[int],
    pad_id: int = 0,
):
    """Yield the padded ``Batch`` es of ``ids`` (token-id arrays), in plan order."""
    lengths = np.fromiter((len(x) for x in ids), np.int64, len(ids))
    for rows, bucket in plan(lengths, rows_for, buckets):
        size = rows_for(bucket)
        tokens = np.full((size, bucket), pad_id, np.int32)
        lens = np.zeros(size, np.int32)
        for j, r in enumerate(rows):
            n = lengths[r]
            tokens[j, :n] = ids[r]
            lens[j] = n
        yield Batch(rows, bucket, tokens, lens)


class PackedBatch(NamedTuple):
    seqs: np.ndarray  # indices into the input of the call's sequences, in slot order
    tokens: np.ndarray  # [rows, width] int32, sequences back to back, pad_id after them
    positions: np.ndarray  # [rows, width] int32: each token's position in its own sequence
    segments: np.ndarray  # [rows, width] int32: each token's slot, -1 for padding
    starts: np.ndarray  # [slots] int32: flat start of each slot's sequence (0 when unused)
    lengths: np.ndarray  # [slots] int32 (0 when unused)


def pack_rows(lengths: np.ndarray, width: int) -> list[list[int]]:
    """Sequences (by index) per row of ``width`` tokens: best fit, longest first (each sequence
    goes to the fullest row it still fits in), so rows end with little padding."""
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free tokens, row), sorted; full rows leave it
    for i in np.argsort(-np.asarray(lengths), kind="stable"):
        n = int(lengths[i])
        if n > width:
            raise ValueError(f"a sequence of {n} tokens does not fit a row of {width}")
        j = bisect.bisect_left(room, (n, -1))
        if j < len(room):
            free, row = room.pop(j)
        else:
            free, row = width, len(rows)
            rows.append([])
        rows[row].append(int(i))
        if free - n > 0:
            bisect.insort(room, (free - n, row))
    return rows


def packed_batches(
    ids: Sequence[np.ndarray], width: int, rows: int, slots: int, pad_id: int = 0
) -> Iterator[PackedBatch]:
    """The ``PackedBatch`` es of ``ids``: ``rows`` rows of ``width`` tokens and at most ``slots``
    sequences per call."""
    lengths = np.fromiter((len(x) for x in ids), np.int64, len(ids))
    packed = pack_rows(lengths, width)
    start = 0
    while start < len(packed):
        end, count = start, 0
        while end < len(packed) and end - start < rows and count + len(packed[end]) <= slots:
            count += len(packed[end])
            end += 1
        if end == start:
            raise ValueError(f"a row of {len(packed[start])} sequences exceeds {slots} slots")
        tokens = np.full((rows, width), pad_id, np.int32)
        positions = np.zeros((rows, width), np.int32)
        segments = np.full((rows, width), -1, np.int32)
        starts = np.zeros(slots, np.int32)
        lens = np.zeros(slots, np.int32)
        seqs: list[int] = []
        for r, row in enumerate(packed[start:end]):
            at = 0
            for i in row:
                n, slot = int(lengths[i]), len(seqs)
                tokens[r, at : at + n] = ids[i]
                positions[r, at : at + n] = np.arange(n, dtype=np.int32)
                segments[r, at : at + n] = slot
                starts[slot], lens[slot] = r * width + at, n
                seqs.append(i)
                at += n
        yield PackedBatch(np.asarray(seqs, np.int64), tokens, positions, segments, starts, lens)
        start = end
