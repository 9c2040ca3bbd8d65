"""Static-shape batches: sequences sorted by length, cut into batches, each padded to the smallest
length bucket that holds its longest row and to that bucket's fixed number of rows.

Sorting longest first makes batches tight (neighbours have near-equal lengths) and leaves the one
partial batch at the short end, where its empty rows cost least. A bucket's row count is fixed
(``rows_for(bucket)``: one batch size for all, or a token budget divided by the bucket), so every
batch has one of ``len(buckets)`` shapes and the number of compiled programs never depends on
the data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
