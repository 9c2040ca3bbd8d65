"""Beam pipeline options and the local runner.

Locally we run the DirectRunner's batch engine, the FnApiRunner, in this process. (Beam 2.77's
"DirectRunner" name first tries the Prism runner, which downloads a binary from GitHub at run
time and runs DoFns in other processes; we never download at run time, and in-process execution
lets the CLI show live progress and the engine load once.)
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
from collections.abc import Iterator
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


def quiet_logging(verbose: int = 0) -> None:
    """Logging on stderr for the CLI and the job process: warnings by default (-v info, -vv
    debug); Beam's and JAX's own chatter only when asked for."""
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    if verbose == 0:
        # google.auth._default warns on its way to the DefaultCredentialsError that
        # storage.CredentialsError then explains in one paragraph.
        for noisy in ("apache_beam", "jax", "absl", "google.auth._default"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)


class _WorkerTracebacks:
    """sys.stderr, minus the tracebacks Beam's SDK worker prints there itself when a bundle
    fails (``print(traceback, file=sys.stderr)``): the failure is reported once, by whoever ran
    the pipeline; the traceback goes to the log at debug level."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        if text.startswith("Traceback (most recent call last)") and "apache_beam" in text:
            logging.getLogger("apache_beam.runners.worker").debug("%s", text)
            return len(text)
        return int(self._stream.write(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def worker_tracebacks_to_log() -> Iterator[None]:
    original = sys.stderr
    sys.stderr = _WorkerTracebacks(original)
    try:
        yield
    finally:
        sys.stderr = original


def local_runner() -> Any:
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    return fn_runner.FnApiRunner()
