"""A job's status (``status.json``), typed: its state, how it came, how it runs, what it cost.

States: QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED | STOPPED_BUDGET (its budget cap,
``max_cost_usd``, stopped it before the projected cost passed it: its committed shards are kept
and the manifest says how many records are left); a QUEUED job may also be CANCELLED,
or FAILED when it cannot be launched. A job that ended may be resumed: it is QUEUED again (under
the same id, so its committed shards are skipped), and its history keeps every run. ``JobStatus`` is immutable: a change is a new value
(``dataclasses.replace``) written by compare-and-swap (see ``jobs.store``).

Fields: job_id, name, state, spec_digest, job_dir (where the pipeline writes:
``<spec.output>/<job_id>``), root (the job store), created_at, updated_at, started_at,
finished_at (RFC 3339), submitted_by, submission (how it came: cli, pubsub or gcs, with the
message id, object and generation), runner, launch (the launcher's handle: a local pid or a
Dataflow job id, and the claim that launched it), progress and heartbeat_at while it runs, error
(on failure), manifest (the cost manifest's summary), history (every state, when, by whom).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from hyperbatch.schemas.records import Counters


class JobState(enum.StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    STOPPED_BUDGET = "STOPPED_BUDGET"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.STOPPED_BUDGET}
)
TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.FAILED, JobState.CANCELLED}),
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.STOPPED_BUDGET}
    ),
    # resuming (``jobs resume``, a rerun with ``hyperbatch run``): the same job, queued again
    JobState.SUCCEEDED: frozenset({JobState.QUEUED}),
    JobState.FAILED: frozenset({JobState.QUEUED}),
    JobState.CANCELLED: frozenset({JobState.QUEUED}),
    JobState.STOPPED_BUDGET: frozenset({JobState.QUEUED}),
}


def _known(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``values`` that are fields of ``cls`` (newer writers may add fields)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


@dataclasses.dataclass(frozen=True)
class Transition:
    state: str
    at: str
    by: str


@dataclasses.dataclass(frozen=True)
class Launch:
    """How a job was launched: the claim that decided who launches it, then the handle."""

    launcher: str | None = None  # local | dataflow
    claimed_by: str | None = None  # host:pid:nonce of the launch attempt that won the claim
    claimed_at: str | None = None
    claimed_at_unix: float | None = None
    launched_at: str | None = None
    pid: int | None = None  # local: the job process (a session leader) and its host and log
    host: str | None = None
    log: str | None = None
    dataflow_job_id: str | None = None  # dataflow: the job and where to see it
    project: str | None = None
    region: str | None = None
    console_url: str | None = None

    def merged(self, **fields: Any) -> Launch:
        return dataclasses.replace(self, **fields)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Launch:
        return cls(**_known(cls, d))


@dataclasses.dataclass(frozen=True)
class ManifestSummary:
    """The part of a cost manifest that travels with the final status and event."""

    status: str
    records_in: int
    results: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    wall_seconds: float
    accelerator_seconds: float
    cost_usd: float
    usd_per_1k_tokens: float
    manifest: str  # where the whole manifest is
    results_glob: str
    errors_glob: str
    vectors_glob: str | None = None
    records_left: int = 0  # not served: a budget stop left them (STOPPED_BUDGET)
    max_cost_usd: float | None = None

    @classmethod
    def of(cls, manifest: Mapping[str, Any], manifest_path: str) -> ManifestSummary:
        return cls(
            status=manifest["status"],
            records_in=int(manifest["records_in"]),
            results=int(manifest["results"]),
            errors=int(manifest["errors"]),
            prompt_tokens=int(manifest["prompt_tokens"]),
            completion_tokens=int(manifest["completion_tokens"]),
            wall_seconds=float(manifest["wall_seconds"]),
            accelerator_seconds=float(manifest["accelerator_seconds"]),
            cost_usd=float(manifest["cost_usd"]),
            usd_per_1k_tokens=float(manifest["usd_per_1k_tokens"]),
            manifest=manifest_path,
            results_glob=manifest["outputs"]["results"],
            errors_glob=manifest["outputs"]["errors"],
            vectors_glob=manifest["outputs"].get("vectors"),
            records_left=int(manifest.get("records_left", 0)),
            max_cost_usd=manifest.get("max_cost_usd"),
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ManifestSummary:
        return cls(**_known(cls, d))


@dataclasses.dataclass(frozen=True)
class JobStatus:
    job_id: str
    name: str
    state: JobState
    spec_digest: str
    job_dir: str
    root: str
    created_at: str
    updated_at: str
    started_at: str | None = None
    finished_at: str | None = None
    submitted_by: str | None = None
    submission: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    runner: str | None = None
    launch: Launch | None = None
    progress: Counters | None = None
    heartbeat_at: str | None = None
    error: str | None = None
    manifest: ManifestSummary | None = None
    history: tuple[Transition, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The ``status.json`` document (and what ``--format json`` prints)."""
        return {
            "job_id": self.job_id,
            "name": self.name,
            "state": self.state.value,
            "spec_digest": self.spec_digest,
            "job_dir": self.job_dir,
            "root": self.root,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "submitted_by": self.submitted_by,
            "submission": dict(self.submission),
            "runner": self.runner,
            "launch": self.launch.to_json() if self.launch else None,
            "progress": self.progress.to_dict() if self.progress else None,
            "heartbeat_at": self.heartbeat_at,
            "error": self.error,
            "manifest": self.manifest.to_json() if self.manifest else None,
            "history": [dataclasses.asdict(t) for t in self.history],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> JobStatus:
        values = _known(cls, d)
        values["state"] = JobState(d["state"])
        values["submission"] = dict(d.get("submission") or {})
        values["launch"] = Launch.from_json(d["launch"]) if d.get("launch") else None
        values["progress"] = Counters.from_dict(d["progress"]) if d.get("progress") else None
        values["manifest"] = ManifestSummary.from_json(d["manifest"]) if d.get("manifest") else None
        values["history"] = tuple(Transition(**_known(Transition, t)) for t in d.get("history", []))
        return cls(**values)
