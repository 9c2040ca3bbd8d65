"""Beam pipeline options and the local runner.

Locally we run the DirectRunner's batch engine, the FnApiRunner, in this process. (Beam 2.77's
"DirectRunner" name first tries the Prism runner, which downloads a binary from GitHub at run
time and runs DoFns in other processes; we never download at run time, and in-process execution
lets the CLI show live progress and the engine load once.)
"""

from __future__ import annotations

import math
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions


def shards_in_flight(batch_size: int, records_per_shard: int) -> int:
    """Bundles to keep in flight per worker process so the engine loop always has work to
    refill its slots with: about two batches' worth of records, at least two shards (one is
    finishing while the next starts), at most 16 threads."""
    return min(16, max(2, math.ceil(2 * batch_size / records_per_shard)))


def local_options(workers: int = 1, threads: int = 1, **extra: Any) -> PipelineOptions:
    """Beam's local runner: on ``workers`` processes (> 1: Beam's multi-process mode, as Dataflow
    runs DoFns away from the process that built the pipeline), else in this process on
    ``threads`` bundle threads (> 1: several shards in flight, feeding one engine loop)."""
    if workers > 1:
        mode, n = "multi_processing", workers
    elif threads > 1:
        mode, n = "multi_threading", threads
    else:
        mode, n = "in_memory", 1
    # flags=[]: never parse our own process's argv as Beam flags.
    return PipelineOptions(flags=[], direct_running_mode=mode, direct_num_workers=n, **extra)


def local_runner() -> Any:
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    return fn_runner.FnApiRunner()
