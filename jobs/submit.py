"""Submitting a job: record it once per job id, then launch it once, whoever asks and how often.

The CLI, the pull listener and the push endpoint all come through ``submit``:

1. ``JobStore.create`` writes the job QUEUED only if no job has its id. A duplicate (the same
   message delivered again, a client re-publishing with the same job id) finds the record.
2. ``ensure_launched`` launches a QUEUED job exactly once: the caller first claims the launch by
   a compare-and-swap on status.json (``launch.claimed_by``); only the winner launches, then
   writes the launcher's handle (``launch.launched_at``). The job process itself moves the job
   to RUNNING (so a job cancelled before it starts never runs). A caller that finds someone
   else's fresh claim waits for it to be fulfilled; a claim older than ``claim_ttl_s`` whose
   launch never came (its owner died) is taken over.

A trigger acks a message once ``submit`` returns: the job is then recorded and launched (or
owned by a live launcher), so no acknowledged request is ever lost.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

import tenacity

from hyperbatch import timestamps
from hyperbatch.jobs.spec import JobSpec
from hyperbatch.jobs.status import JobStatus, Launch
from hyperbatch.jobs.store import JobState, JobStore, Record

log = logging.getLogger(__name__)

#: A launch claim older than this without a launch is presumed dead and may be taken over.
DEFAULT_CLAIM_TTL_S = 300.0


class LaunchError(RuntimeError):
    """A launch that cannot succeed (bad configuration, refused by the service)."""


class LaunchInProgress(Exception):
    """Another process holds a fresh launch claim on this job (internal: wait and look again)."""


class Launcher(Protocol):
    """Starts a recorded job somewhere; hyperbatch.runners has the local and Dataflow ones."""

    name: str

    def plan(self, spec: JobSpec, job_id: str, store: JobStore) -> dict[str, Any]:
        """What ``launch`` would do, as data (``--dry-run``); raises LaunchError if it cannot."""
        ...

    def launch(self, spec: JobSpec, job_id: str, store: JobStore) -> dict[str, Any]:
        """Start the job; returns the handle (merged into status.json's ``launch``)."""
        ...

    def cancel(self, launch: Launch, job_id: str) -> str:
        """Stop a launched job; returns what was done, in words."""
        ...

    def poll(self, record: Record) -> str | None:
        """None while the launched job may still be alive; otherwise why it is gone."""
        ...


@dataclasses.dataclass(frozen=True)
class JobRequest:
    """A validated request for one job."""

    job_id: str
    spec: JobSpec
    submitted_by: str | None
    submission: Mapping[str, Any]  # how it came: {"via": "cli" | "pubsub" | "gcs", ...}


@dataclasses.dataclass(frozen=True)
class Submitted:
    record: Record
    created: bool  # this call recorded the job (False: it already existed)
    launched_here: bool  # this call launched it


def owner_id() -> str:
    """Identifies one launch attempt in a claim (unique per call, so no two calls share one)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def submit(
    store: JobStore,
    request: JobRequest,
    launcher: Launcher | None,
    *,
    owner: str | None = None,
    claim_ttl_s: float = DEFAULT_CLAIM_TTL_S,
) -> Submitted:
    """Record the job (once) and, with a launcher, make sure it is launched (once)."""
    record, created = store.create(
        request.spec,
        request.job_id,
        submitted_by=request.submitted_by,
        submission=request.submission,
        runner=launcher.name if launcher else None,
    )
    if launcher is None:
        return Submitted(record, created, False)
    record, launched = ensure_launched(
        store, request.job_id, launcher, owner=owner or owner_id(), claim_ttl_s=claim_ttl_s
    )
    return Submitted(record, created, launched)


def _claim_age_s(launch: Launch) -> float:
    return time.time() - float(launch.claimed_at_unix or 0.0)


def ensure_launched(
    store: JobStore,
    job_id: str,
    launcher: Launcher,
    *,
    owner: str,
    claim_ttl_s: float = DEFAULT_CLAIM_TTL_S,
) -> tuple[Record, bool]:
    """Launch ``job_id`` unless it is launched or past QUEUED; returns (record, launched here)."""

    def claim(doc: JobStatus) -> JobStatus | None:
        launch = doc.launch or Launch()
        if doc.state != JobState.QUEUED or launch.launched_at:
            return None  # launched, running or finished: nothing to do
        if launch.claimed_by and _claim_age_s(launch) < claim_ttl_s:
            raise LaunchInProgress(launch.claimed_by)
        if launch.claimed_by:
            log.warning(
                "job %s: taking over the launch claim of %s (%.0f s old, never launched)",
                job_id,
                launch.claimed_by,
                _claim_age_s(launch),
            )
        claim = Launch(
            launcher=launcher.name,
            claimed_by=owner,
            claimed_at=timestamps.now(),
            claimed_at_unix=time.time(),
        )
        return dataclasses.replace(doc, launch=claim)

    waiting = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(LaunchInProgress),
        stop=tenacity.stop_after_delay(claim_ttl_s + 30),
        wait=tenacity.wait_fixed(min(0.5, claim_ttl_s / 4)),
        reraise=True,
    )
    record = waiting(store.update, job_id, claim)
    launch = record.launch or Launch()
    if launch.claimed_by != owner or launch.launched_at:
        return record, False
    if record.state != JobState.QUEUED:
        return record, False
    spec = store.spec(job_id)
    try:
        handle = launcher.launch(spec, job_id, store)
    except LaunchError as e:
        log.error("job %s: launch failed: %s", job_id, e)
        return store.transition(
            job_id, JobState.FAILED, expect=[JobState.QUEUED], error=f"launch failed: {e}"
        ), True
    except BaseException:
        _release_claim(store, job_id, owner)  # let the next delivery try again at once
        raise
    return store.merge_launch(job_id, **handle, launched_at=timestamps.now()), True


def _release_claim(store: JobStore, job_id: str, owner: str) -> None:
    def release(doc: JobStatus) -> JobStatus | None:
        launch = doc.launch or Launch()
        if launch.claimed_by != owner or launch.launched_at:
            return None
        return dataclasses.replace(doc, launch=None)

    store.update(job_id, release)
