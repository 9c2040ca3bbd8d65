"""A run's last word in the job store: its end recorded from its manifest, or its death noticed.

``finish`` moves a RUNNING job to SUCCEEDED, FAILED or STOPPED_BUDGET as its cost manifest says
(the job process calls it locally; on Dataflow the pipeline's last step does); ``set_budget``
changes a recorded job's cap (``jobs resume --max-cost-usd``). ``reconcile`` settles a job whose
process or Dataflow job is gone without saying so: if that run wrote its manifest before dying,
the job ends as the manifest says; otherwise it FAILED, with why. Which launcher can tell
whether a run is alive is the caller's choice (the CLI picks it from the launch handle).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from hyperbatch import storage, timestamps
from hyperbatch.jobs.layout import JobFolder
from hyperbatch.jobs.spec import JobSpec, record_once, validate
from hyperbatch.jobs.status import JobState, JobStatus, ManifestSummary
from hyperbatch.jobs.store import IllegalTransition, JobStore, Record
from hyperbatch.schemas.records import Counters


class Poller(Protocol):
    def poll(self, record: Record) -> str | None:
        """None while the launched run may be alive; otherwise why it is gone."""
        ...


def budget_stop_message(manifest: Mapping[str, Any]) -> str:
    """Why a STOPPED_BUDGET job stopped, what it served and left, and how to go on."""
    return (
        f"stopped by its budget: max_cost_usd ${manifest.get('max_cost_usd')} would have been "
        f"passed; spent ${manifest['cost_usd']:.6f}, {manifest['records_in']} records served, "
        f"{manifest.get('records_left', 0)} left. Its committed shards are kept: run it again "
        "with a higher max_cost_usd to serve the rest"
    )


def finish(store: JobStore, job_id: str, manifest: Mapping[str, Any], by: str) -> Record:
    """RUNNING -> SUCCEEDED, FAILED (too many record errors) or STOPPED_BUDGET (its cap stopped
    it), with the manifest's summary."""
    folder = JobFolder(store.get(job_id).status.job_dir)
    summary = ManifestSummary.of(manifest, folder.manifest_json)
    state = JobState(manifest["status"])
    error = None
    if state == JobState.STOPPED_BUDGET:
        error = budget_stop_message(manifest)
    elif state != JobState.SUCCEEDED:
        error = (
            f"{manifest['errors']} of {manifest['records_in']} records failed"
            + (", all of them" if manifest["results"] == 0 else ", more than max_error_rate allows")
            + "; see the error files"
        )
    final = Counters(  # the last heartbeat's counts are stale by now: the manifest's are final
        records=int(manifest["records_in"]),
        results=int(manifest["results"]),
        errors=int(manifest["errors"]),
        prompt_tokens=int(manifest["prompt_tokens"]),
        completion_tokens=int(manifest["completion_tokens"]),
        records_planned=int(manifest["records_in"]) + int(manifest.get("records_left", 0)),
        shards=len(manifest.get("shards", [])),
        shards_planned=len(manifest.get("shards", [])) + int(manifest.get("shards_left", 0)),
    )
    return store.transition(
        job_id,
        state,
        by=by,
        expect=[JobState.RUNNING],
        manifest=summary,
        error=error,
        progress=final,
    )


def resume(store: JobStore, job_id: str, by: str | None = None) -> Record:
    """Queue an ended job (SUCCEEDED, FAILED, CANCELLED or STOPPED_BUDGET) again under its own
    id: its next run skips the shards committed so far. IllegalTransition for a job that is
    queued or running."""
    return store.transition(
        job_id,
        JobState.QUEUED,
        by=by,
        expect=[JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.STOPPED_BUDGET],
    )


def set_budget(
    store: JobStore,
    job_id: str,
    max_cost_usd: float,
    check: Callable[[JobSpec], object] | None = None,
) -> JobSpec:
    """Record a new cap in the job's spec.json (the job id does not change: a budget is not part
    of the spec's digest); its next run honours it. ``check`` sees the updated spec first (and
    may refuse it by raising). Returns the updated spec."""
    spec = store.spec(job_id)
    updated = validate({**spec.to_dict(), "max_cost_usd": max_cost_usd}, check_resources=False)
    if check is not None:
        check(updated)
    record_once(updated, job_id, store.job_folder(job_id))
    return updated


def reconcile(store: JobStore, record: Record, poller: Poller | None) -> Record:
    """Settle a QUEUED/RUNNING job whose launched process or Dataflow job is gone.

    A job still alive (or not launched, or with no poller to ask) is returned as is.
    """
    launch = record.launch
    if record.state.terminal or not launch or not (launch.pid or launch.dataflow_job_id):
        return record
    reason = poller.poll(record) if poller else None
    if reason is None:
        return record
    by = f"hyperbatch reconcile ({socket.gethostname()})"
    manifest = manifest_of_this_run(record)
    if manifest is not None:
        try:
            return finish(store, record.job_id, manifest, by=by)
        except IllegalTransition:
            return store.get(record.job_id)
    seen = (record.status.heartbeat_at, record.state)

    def unchanged(doc: JobStatus) -> bool:
        return (doc.heartbeat_at, doc.state) == seen

    try:
        return store.transition(
            record.job_id, JobState.FAILED, by=by, error=reason, guard=unchanged
        )
    except IllegalTransition:
        return store.get(record.job_id)  # it moved on by itself meanwhile


def manifest_of_this_run(record: Record) -> dict[str, Any] | None:
    """The job's manifest if the run that started at ``started_at`` wrote it."""
    started = record.status.started_at
    path = JobFolder(record.status.job_dir).manifest_json
    if record.state != JobState.RUNNING or not started or not storage.exists(path):
        return None
    manifest = json.loads(storage.read_bytes(path))
    written = timestamps.parse(manifest["created_at"])
    if manifest.get("job_id") != record.job_id or written < timestamps.parse(started).replace(
        microsecond=0
    ):
        return None  # an earlier run's manifest
    return manifest
