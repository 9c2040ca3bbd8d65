"""The job store: one folder per job under a root (a local directory or a gs:// prefix).

    <root>/<job_id>/spec.json     the normalized spec (the same document the pipeline writes)
    <root>/<job_id>/status.json   the job's state and everything known about it (below)
    <root>/_rejected/<key>.json   trigger messages that can never become a job, with the reason

A job exists once its ``status.json`` exists. Every change of ``status.json`` is a
compare-and-swap: read the document with its generation, compute the new one, write it with
``if_generation_match`` (0 to create). Of two writers that read the same generation exactly one
wins; the loser re-reads and decides again, so a state can never be overwritten by a stale view
(a job cancelled while it finishes ends either CANCELLED or SUCCEEDED, never both).

States: QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED; a QUEUED job may also be
CANCELLED, or FAILED when it cannot be launched. Every state change is announced through the
store's ``events`` sink (the status topic, see ``jobs.events``) after it is written.

``status.json`` holds a ``jobs.status.JobStatus``.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import tenacity

from hyperbatch import storage, timestamps
from hyperbatch.jobs import layout
from hyperbatch.jobs.ids import JOB_ID_RE, check_job_id
from hyperbatch.jobs.spec import JobSpec, record_once
from hyperbatch.jobs.status import (
    TRANSITIONS,
    JobState,
    JobStatus,
    Launch,
    ManifestSummary,
    Transition,
)
from hyperbatch.retry import CLOUD_RETRY
from hyperbatch.schemas.records import Counters

__all__ = ["IllegalTransition", "JobNotFound", "JobState", "JobStatus", "JobStore", "Record"]


class JobNotFound(LookupError):
    """No job with this id under the store's root."""


class IllegalTransition(RuntimeError):
    """The job is not in a state from which the requested change is allowed."""

    def __init__(self, job_id: str, state: str, wanted: str):
        self.job_id, self.state, self.wanted = job_id, state, wanted
        super().__init__(f"job {job_id} is {state}; it cannot become {wanted}")


class _Lost(Exception):
    """A compare-and-swap write lost a race (internal: the update is recomputed)."""


class EventSink(Protocol):
    def publish(self, record: Record, previous: str | None) -> None: ...


def actor() -> str:
    """Who this process is, for the history and ``submitted_by``: ``user@host``."""
    import getpass

    return f"{getpass.getuser()}@{socket.gethostname()}"


@dataclasses.dataclass(frozen=True)
class Record:
    """A job's status and the generation it was read at."""

    status: JobStatus
    generation: int

    @property
    def job_id(self) -> str:
        return self.status.job_id

    @property
    def state(self) -> JobState:
        return self.status.state

    @property
    def launch(self) -> Launch | None:
        return self.status.launch

    def to_dict(self) -> dict[str, Any]:
        return self.status.to_json()


# A CAS write that lost is recomputed from a fresh read; contention is short (a few writers per
# job: the launcher, the job process's heartbeat, a cancel), so a few quick retries suffice.
_CAS_RETRY = tenacity.retry(
    retry=tenacity.retry_if_exception_type(_Lost),
    stop=tenacity.stop_after_attempt(50),
    wait=tenacity.wait_random_exponential(multiplier=0.01, max=0.5),
    reraise=True,
)


class JobStore:
    """Jobs under ``root``; ``events`` (optional) hears every state change."""

    def __init__(self, root: str, events: EventSink | None = None):
        if not root:
            raise ValueError("a job store needs a root directory or gs:// prefix")
        self.root = root.rstrip("/") if storage.is_gcs(root) else os.path.abspath(root)
        self.events = events

    def __repr__(self) -> str:
        return f"JobStore({self.root!r})"

    # ----------------------------------------------------------------------- paths

    def job_folder(self, job_id: str) -> str:
        """``<root>/<job_id>``: every path of a job comes from here, so an id that is not a
        job id (``../other``, ``a/b``) is refused before it names a path (SpecError)."""
        return storage.join(self.root, check_job_id(job_id))

    def status_path(self, job_id: str) -> str:
        return layout.JobFolder(self.job_folder(job_id)).status

    def spec_path(self, job_id: str) -> str:
        return layout.JobFolder(self.job_folder(job_id)).spec

    # ----------------------------------------------------------------------- reading

    def find(self, job_id: str) -> Record | None:
        found = storage.read_versioned(self.status_path(job_id))
        if found is None:
            return None
        data, generation = found
        return Record(JobStatus.from_json(json.loads(data)), generation)

    def get(self, job_id: str) -> Record:
        record = self.find(job_id)
        if record is None:
            raise JobNotFound(
                f"no job {job_id!r} in {self.root}; list jobs with `hyperbatch jobs list`"
                " (and check --root / HYPERBATCH_JOBS_ROOT)"
            )
        return record

    def spec(self, job_id: str) -> JobSpec:
        """The job's JobSpec, as recorded at submission."""
        from hyperbatch.jobs import spec as job_spec

        body = json.loads(storage.read_bytes(self.spec_path(job_id)))
        return job_spec.validate(body["spec"], source=self.spec_path(job_id), check_resources=False)

    def list(
        self, states: Iterable[str] | None = None, limit: int | None = None, workers: int = 8
    ) -> list[Record]:
        """Jobs newest first, optionally only in ``states``, at most ``limit``."""
        wanted = {JobState(s) for s in states} if states else None
        ids = _child_folders(self.root)
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            records = [r for r in pool.map(self.find, ids) if r is not None]
        records = [r for r in records if wanted is None or r.state in wanted]
        records.sort(key=lambda r: (r.status.created_at, r.job_id), reverse=True)
        return records[:limit] if limit is not None else records

    # ----------------------------------------------------------------------- writing

    def create(
        self,
        spec: JobSpec,
        job_id: str,
        *,
        submitted_by: str | None,
        submission: Mapping[str, Any],
        runner: str | None,
    ) -> tuple[Record, bool]:
        """Record a QUEUED job (spec.json, then status.json, each only if absent).

        Returns the record and whether this call created it. The same job id with the same
        spec returns the existing record (a duplicate submission); with another spec it is
        refused with JobIdConflict.
        """
        record_once(spec, job_id, self.job_folder(job_id))
        at = timestamps.now()
        doc = JobStatus(
            job_id=job_id,
            name=spec.name,
            state=JobState.QUEUED,
            spec_digest=spec.digest,
            job_dir=spec.job_dir(job_id),
            root=self.root,
            created_at=at,
            updated_at=at,
            submitted_by=submitted_by,
            submission=dict(submission),
            runner=runner,
            history=(Transition(JobState.QUEUED.value, at, submitted_by or actor()),),
        )
        try:
            generation = storage.write_bytes(
                self.status_path(job_id),
                _encode(doc),
                if_generation_match=0,
                content_type="application/json",
            )
        except storage.PreconditionFailed:
            return self.get(job_id), False
        record = Record(doc, generation)
        self._announce(record, None)
        return record, True

    def update(self, job_id: str, change: Callable[[JobStatus], JobStatus | None]) -> Record:
        """Apply ``change`` (status -> new status, or None for "no change") by compare-and-swap.

        ``change`` may run several times (after a lost race, on a fresh read); it must be a
        pure function of the status. State changes must go through ``transition``.
        """
        return self._update(job_id, change)[0]

    def transition(
        self,
        job_id: str,
        to: JobState | str,
        *,
        by: str | None = None,
        expect: Iterable[JobState | str] | None = None,
        error: str | None = None,
        manifest: ManifestSummary | None = None,
        launch: Mapping[str, Any] | None = None,
        guard: Callable[[JobStatus], bool] | None = None,
        progress: Counters | None = None,
    ) -> Record:
        """Move a job to ``to`` (only along TRANSITIONS, and only from ``expect`` if given).

        ``launch`` is merged into the launch handle; ``guard`` (status -> bool) must hold on the
        status being replaced. Raises IllegalTransition when the job is in a state that does
        not allow it (e.g. it finished while this caller was deciding).
        """
        to = JobState(to)
        allowed_from = {JobState(s) for s in expect} if expect is not None else None
        who = by or actor()

        def change(doc: JobStatus) -> JobStatus:
            state = doc.state
            if to not in TRANSITIONS[state] or (allowed_from and state not in allowed_from):
                raise IllegalTransition(job_id, state.value, to.value)
            if guard is not None and not guard(doc):
                raise IllegalTransition(
                    job_id, f"{state.value} (changed since it was read)", to.value
                )
            at = timestamps.now()
            if to == JobState.QUEUED:  # resumed: a new run, nothing of the last one's handle
                doc = dataclasses.replace(
                    doc, launch=None, error=None, progress=None, heartbeat_at=None,
                    finished_at=None,
                )  # fmt: skip
            return dataclasses.replace(
                doc,
                state=to,
                updated_at=at,
                started_at=at if to == JobState.RUNNING else doc.started_at,
                finished_at=at if to.terminal else doc.finished_at,
                error=error if error is not None else doc.error,
                manifest=manifest if manifest is not None else doc.manifest,
                progress=progress if progress is not None else doc.progress,
                launch=(doc.launch or Launch()).merged(**launch) if launch else doc.launch,
                history=(*doc.history, Transition(to.value, at, who)),
            )

        record, previous = self._update(job_id, change)
        self._announce(record, previous)
        return record

    def merge_launch(self, job_id: str, **fields: Any) -> Record:
        """Add fields to the launch handle (any state; the handle is information, not state)."""

        def change(doc: JobStatus) -> JobStatus:
            launch = (doc.launch or Launch()).merged(**fields)
            return dataclasses.replace(doc, launch=launch, updated_at=timestamps.now())

        return self.update(job_id, change)

    def reject(self, key: str, reason: str, details: Mapping[str, Any]) -> str:
        """Record a trigger message that can never become a job (idempotent per ``key``)."""
        path = storage.join(self.root, layout.REJECTED, f"{key}.json")
        doc = {"key": key, "reason": reason, "recorded_at": timestamps.now(), **details}
        # An earlier delivery of the same message may have recorded it already: keep that one.
        with contextlib.suppress(storage.PreconditionFailed):
            storage.write_bytes(
                path, _encode(doc), if_generation_match=0, content_type="application/json"
            )
        return path

    def rejected(self) -> builtins.list[dict[str, Any]]:
        prefix = storage.join(self.root, layout.REJECTED) + "/"
        out = []
        for info in storage.list_prefix(prefix):
            if info.path.endswith(".json"):
                out.append(json.loads(storage.read_bytes(info.path)))
        return sorted(out, key=lambda d: d["recorded_at"])

    # ----------------------------------------------------------------------- internals

    def _update(
        self, job_id: str, change: Callable[[JobStatus], JobStatus | None]
    ) -> tuple[Record, str | None]:
        path = self.status_path(job_id)

        @_CAS_RETRY
        def attempt() -> tuple[Record, str | None]:
            record = self.get(job_id)
            previous = record.state.value
            new = change(record.status)
            if new is None:
                return record, None
            try:
                generation = storage.write_bytes(
                    path,
                    _encode(new),
                    if_generation_match=record.generation,
                    content_type="application/json",
                )
            except storage.PreconditionFailed as e:
                raise _Lost(str(e)) from e
            return Record(new, generation), previous

        return attempt()

    def _announce(self, record: Record, previous: str | None) -> None:
        if self.events is not None:
            self.events.publish(record, previous)


def _encode(doc: JobStatus | Mapping[str, Any]) -> bytes:
    data = doc.to_json() if isinstance(doc, JobStatus) else doc
    return json.dumps(data, indent=2, sort_keys=False).encode()


@storage.translate_gcs_errors("list")
@CLOUD_RETRY
def _gcs_child_folders(root: str) -> list[str]:
    bucket, prefix = storage.split_gcs(root)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    pages = storage.gcs_client().list_blobs(bucket, prefix=prefix, delimiter="/")
    list(pages)  # consume the pages: prefixes fill in as they are read
    return sorted(p[len(prefix) :].rstrip("/") for p in pages.prefixes)


def _child_folders(root: str) -> list[str]:
    """Names of the job folders directly under ``root`` (job ids start with a letter)."""
    if storage.is_gcs(root):
        names = _gcs_child_folders(root)
    else:
        try:
            names = sorted(e.name for e in os.scandir(root) if e.is_dir())
        except FileNotFoundError:
            names = []
    return [n for n in names if JOB_ID_RE.match(n)]
