"""Beam pipeline options and the local runner.

Locally we run the DirectRunner's batch engine, the FnApiRunner, in this process. (Beam 2.77's
"DirectRunner" name first tries the Prism runner, which downloads a binary from GitHub at run
time and runs DoFns in other processes; we never download at run time, and in-process execution
lets the CLI show live progress and the engine load once.)
"""

from __future__ import annotations

from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions


def local_options(workers: int = 1, **extra: Any) -> PipelineOptions:
    """In this process (``workers`` 1), or on ``workers`` Beam worker processes -- as Dataflow
    runs DoFns, away from the process that built the pipeline."""
    mode = "multi_processing" if workers > 1 else "in_memory"
    # flags=[]: never parse our own process's argv as Beam flags.
    return PipelineOptions(flags=[], direct_running_mode=mode, direct_num_workers=workers, **extra)


def local_runner() -> Any:
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    return fn_runner.FnApiRunner()
