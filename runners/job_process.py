"""The job process: one recorded job, run to its end on this machine (Beam's local runner).

``execute`` moves the job QUEUED -> RUNNING (refusing to run a job that is no longer queued),
heartbeats its progress into status.json (and stops itself when it finds the job CANCELLED),
runs the pipeline and records SUCCEEDED/FAILED with the manifest (``jobs.lifecycle.finish``).
The local launcher starts it as ``python -m hyperbatch.runners.launch execute``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

from hyperbatch import timestamps
from hyperbatch.jobs import events
from hyperbatch.jobs.layout import JobFolder
from hyperbatch.jobs.lifecycle import finish
from hyperbatch.jobs.status import JobState, JobStatus
from hyperbatch.jobs.store import IllegalTransition, JobStore
from hyperbatch.runners import pipeline
from hyperbatch.runners.local import HEARTBEAT_S
from hyperbatch.runners.options import local_options, local_runner, shards_in_flight
from hyperbatch.runners.progress import PROGRESS
from hyperbatch.schemas.records import Counters

log = logging.getLogger(__name__)

EXIT_SUCCEEDED, EXIT_FAILED, EXIT_NOT_RUN = 0, 1, 3


class _Heartbeat(threading.Thread):
    """Writes progress into status.json; stops the process when the job is no longer RUNNING."""

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        interval_s: float,
        progress: Callable[[], Counters],
        on_cancel: Callable[[], None],
    ):
        super().__init__(name="hyperbatch-heartbeat", daemon=True)
        self.store, self.job_id, self.interval_s = store, job_id, interval_s
        self.progress, self.on_cancel = progress, on_cancel
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                self.beat()
            except IllegalTransition as e:
                log.warning("job %s is %s: stopping the job process", self.job_id, e.state)
                self.on_cancel()
                return
            except Exception as e:  # noqa: BLE001 - a missed beat is not fatal; the next one may pass
                log.warning("job %s: heartbeat failed: %r", self.job_id, e)

    def beat(self) -> None:
        snapshot = self.progress()

        def change(doc: JobStatus) -> JobStatus:
            if doc.state != JobState.RUNNING:
                raise IllegalTransition(self.job_id, doc.state, "RUNNING (heartbeat)")
            now = timestamps.now()
            return dataclasses.replace(doc, progress=snapshot, heartbeat_at=now, updated_at=now)

        self.store.update(self.job_id, change)


def _stop_own_process_group() -> None:
    # The local launcher makes the job process a session leader: its Beam workers share its group.
    if os.getsid(0) == os.getpid():
        os.killpg(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)


def _progress(job_dir: str, count_commits: bool) -> Callable[[], Counters]:
    def snapshot() -> Counters:
        s = PROGRESS.snapshot()
        if count_commits:  # the DoFns run in worker processes: count committed shards instead
            s.shards = len(JobFolder(job_dir).committed_shards())
        return s

    return snapshot


@dataclasses.dataclass
class Outcome:
    """How a run of a recorded job ended."""

    code: int  # EXIT_SUCCEEDED | EXIT_FAILED | EXIT_NOT_RUN
    manifest: dict[str, Any] | None = None
    error: BaseException | None = None


def run_recorded(
    store: JobStore,
    job_id: str,
    *,
    by: str,
    launch: dict[str, Any],
    workers: int = 1,
    heartbeat_s: float = HEARTBEAT_S,
    on_cancel: Callable[[], None] = _stop_own_process_group,
) -> Outcome:
    """Move a QUEUED job to RUNNING, run it here with heartbeats, record how it ended."""
    try:
        record = store.transition(
            job_id, JobState.RUNNING, by=by, expect=[JobState.QUEUED], launch=launch
        )
    except IllegalTransition as e:
        log.warning("not running job %s: %s", job_id, e)
        return Outcome(EXIT_NOT_RUN, error=e)
    spec = store.spec(job_id)
    options = local_options(workers, shards_in_flight(spec.batch_size, spec.records_per_shard))
    beat = _Heartbeat(
        store, job_id, heartbeat_s, _progress(record.status.job_dir, workers > 1), on_cancel
    )
    beat.start()
    try:
        manifest = pipeline.run(spec, job_id, options=options, runner=local_runner())
    except BaseException as e:
        beat.stopped.set()
        log.debug("job %s failed", job_id, exc_info=e)
        try:
            store.transition(
                job_id,
                JobState.FAILED,
                by=by,
                expect=[JobState.RUNNING],
                error=f"{type(e).__name__}: {e}",
            )
        except IllegalTransition as lost:
            log.warning("job %s: %s", job_id, lost)
        return Outcome(EXIT_FAILED, error=e)
    finally:
        beat.stopped.set()
    try:
        final = finish(store, job_id, manifest, by)
    except IllegalTransition as e:
        log.warning("job %s finished, but %s", job_id, e)
        return Outcome(EXIT_NOT_RUN, manifest, e)
    code = EXIT_SUCCEEDED if final.state == JobState.SUCCEEDED else EXIT_FAILED
    return Outcome(code, manifest)


def execute(
    root: str,
    job_id: str,
    *,
    events_topic: str | None = None,
    workers: int = 1,
    heartbeat_s: float = HEARTBEAT_S,
    on_cancel: Callable[[], None] = _stop_own_process_group,
) -> int:
    """Run a QUEUED job of a job store to its end in this process; returns an exit code."""
    store = JobStore(root, events.sink(events_topic))
    outcome = run_recorded(
        store,
        job_id,
        by=f"job process {os.getpid()}@{socket.gethostname()}",
        launch={"launcher": "local", "pid": os.getpid(), "host": socket.gethostname()},
        workers=workers,
        heartbeat_s=heartbeat_s,
        on_cancel=on_cancel,
    )
    if outcome.error is not None and outcome.code == EXIT_FAILED:
        log.error("job %s failed", job_id, exc_info=outcome.error)
    return outcome.code
