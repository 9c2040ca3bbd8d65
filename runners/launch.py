"""Launching, in one place: the launcher that handles a job, and the programs launchers start.

* ``launcher_for(record)``: the launcher (local or Dataflow) that can poll and cancel the run a
  status record's launch handle names.
* ``python -m hyperbatch.runners.launch execute --root R --job-id J``: the local job process
  (``job_process.execute``); ``... flex`` is the Flex Template's program (``flex.flex_main``).

The launchers themselves: ``local.LocalLauncher`` and ``dataflow.DataflowLauncher``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from hyperbatch.engines.registry import import_plugins
from hyperbatch.jobs.store import Record
from hyperbatch.runners.dataflow import DataflowConfig, DataflowLauncher
from hyperbatch.runners.local import HEARTBEAT_S, ForegroundRun, LocalLauncher


def launcher_for(
    record: Record, dataflow_config: DataflowConfig | None = None
) -> LocalLauncher | DataflowLauncher | ForegroundRun | None:
    """The launcher that can poll and cancel this record's launched job."""
    kind = record.launch.launcher if record.launch else None
    if kind == "local":
        return LocalLauncher()
    if kind == "foreground":
        return ForegroundRun()
    if kind == "dataflow":
        endpoint = os.environ.get("HYPERBATCH_DATAFLOW_API_ENDPOINT")
        return DataflowLauncher(dataflow_config or DataflowConfig(api_endpoint=endpoint))
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["flex"]:
        from hyperbatch.runners.flex import flex_main

        return flex_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m hyperbatch.runners.launch")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("execute", help="run a QUEUED job of a job store in this process")
    ex.add_argument("--root", required=True)
    ex.add_argument("--job-id", required=True)
    ex.add_argument("--events-topic")
    ex.add_argument("--workers", type=int, default=1)
    ex.add_argument("--heartbeat-s", type=float, default=HEARTBEAT_S)
    ex.add_argument("--plugin", action="append", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("apache_beam", "jax", "absl"):  # the log file is for the job's story
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import_plugins(args.plugin)
    from hyperbatch.runners.job_process import execute

    return execute(
        args.root,
        args.job_id,
        events_topic=args.events_topic,
        workers=args.workers,
        heartbeat_s=args.heartbeat_s,
    )


if __name__ == "__main__":
    sys.exit(main())
