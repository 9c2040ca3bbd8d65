"""One runner per job, and a record of every attempt: a lease on the job folder.

``<job_dir>/_lease.json`` names the attempt that runs the job: its owner (``host:pid:nonce``),
when it was taken and renewed, and when it expires. It is taken by compare-and-swap (create only
if absent -- a generation precondition on Cloud Storage, a locked check locally) and renewed by
a heartbeat every third of its time to live. A second runner finds it and either refuses
(``LeaseHeld``: exit 2, naming the holder) or, when the lease is stale -- expired, or held by a
process of this host that no longer exists -- takes it over by the same compare-and-swap and
resumes the job (committed shards are skipped). Releasing deletes it only if it is still ours.

Every attempt also leaves ``<job_dir>/_attempts/<attempt>.json``: when it started, when it was
last seen (renewed with the lease) and when it finished, so the cost manifest counts the wall
and accelerator time of every attempt -- failed, killed and resumed ones included.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from hyperbatch import storage, timestamps
from hyperbatch.jobs.layout import JobFolder

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 60.0
TTL_ENV = "HYPERBATCH_LEASE_TTL_S"


class LeaseHeld(RuntimeError):
    """Another live runner holds the job (a user error: wait for it, or cancel it)."""


def _ttl() -> float:
    return float(os.environ.get(TTL_ENV, DEFAULT_TTL_S))


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One run of a job (from ``_attempts/``)."""

    attempt: str
    owner: str
    started_unix: float
    seen_unix: float  # last renewal (or the finish)
    finished_unix: float | None = None
    outcome: str | None = None  # succeeded | failed (None: it died without saying)

    @property
    def wall_seconds(self) -> float:
        return max(0.0, (self.finished_unix or self.seen_unix) - self.started_unix)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Attempt:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def holder(job_dir: str) -> dict[str, Any] | None:
    """The lease document of the job folder's runner if it is alive; None if there is no
    lease or it is stale."""
    found = storage.read_versioned(JobFolder(job_dir).lease)
    if found is None:
        return None
    doc = json.loads(found[0])
    return None if stale_reason(doc) else doc


def stale_reason(doc: Mapping[str, Any]) -> str | None:
    """Why a lease may be taken over (expired, or its process on this host is gone)."""
    if time.time() > float(doc.get("expires_at_unix", 0)):
        return f"it expired at {timestamps.from_unix(float(doc.get('expires_at_unix', 0)))}"
    if doc.get("host") == socket.gethostname() and not _process_exists(int(doc["pid"])):
        return f"its process {doc['pid']} on this host is gone"
    return None


def attempts(job_dir: str) -> list[Attempt]:
    """Every attempt recorded for the job folder, oldest first."""
    prefix = JobFolder(job_dir).attempts_prefix
    out = []
    for f in storage.list_prefix(prefix):
        rest = f.path[len(prefix) :]
        if "/" in rest or not rest.endswith(".json"):
            continue
        with contextlib.suppress(storage.StorageError, ValueError, TypeError):
            out.append(Attempt.from_json(json.loads(storage.read_bytes(f.path))))
    return sorted(out, key=lambda a: a.started_unix)


class Lease:
    """The lease on one job folder, for one attempt (see the module docstring)."""

    def __init__(self, job_dir: str, ttl_s: float | None = None):
        self.job_dir = job_dir
        self.path = JobFolder(job_dir).lease
        self.ttl_s = ttl_s if ttl_s is not None else _ttl()
        self.attempt = f"a-{int(time.time())}-{uuid.uuid4().hex[:8]}"
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{self.attempt}"
        self.started_unix = time.time()
        self._generation: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    @property
    def attempt_path(self) -> str:
        return JobFolder(self.job_dir).attempt(self.attempt)

    def _doc(self) -> dict[str, Any]:
        now = time.time()
        return {
            "owner": self.owner,
            "attempt": self.attempt,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "acquired_unix": self.started_unix,
            "renewed_at": timestamps.now(),
            "renewed_unix": now,
            "expires_at_unix": now + self.ttl_s,
        }

    def acquire(self) -> None:
        """Take the lease (or raise LeaseHeld)."""
        body = json.dumps(self._doc()).encode()
        for _ in range(5):
            try:
                self._generation = storage.write_bytes(
                    self.path, body, if_generation_match=0, content_type="application/json"
                )
                break
            except storage.PreconditionFailed:
                found = storage.read_versioned(self.path)
                if found is None:
                    continue  # released meanwhile: try again
                data, generation = found
                doc = json.loads(data)
                why = stale_reason(doc)
                if why is None:
                    raise LeaseHeld(
                        f"job folder {self.job_dir} is being run by {doc.get('owner')} (last "
                        f"heartbeat {doc.get('renewed_at')}); wait for it to end, or cancel it "
                        "(`hyperbatch jobs cancel`)"
                    ) from None
                log.warning("taking over the lease of %s: %s", doc.get("owner"), why)
                try:
                    self._generation = storage.write_bytes(
                        self.path, body, if_generation_match=generation,
                        content_type="application/json",
                    )  # fmt: skip
                    break
                except storage.PreconditionFailed:
                    continue  # someone else took it over first: look again
        else:
            raise LeaseHeld(f"job folder {self.job_dir}: the lease keeps changing hands")
        self._record(None)
        self._thread = threading.Thread(
            target=self._heartbeat, name="hyperbatch-lease", daemon=True
        )
        self._thread.start()

    def _record(self, outcome: str | None) -> None:
        now = time.time()
        doc = {
            "attempt": self.attempt,
            "owner": self.owner,
            "started_unix": self.started_unix,
            "seen_unix": now,
            "finished_unix": now if outcome else None,
            "outcome": outcome,
        }
        storage.write_bytes(
            self.attempt_path, json.dumps(doc).encode(), content_type="application/json"
        )

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self._generation = storage.write_bytes(
                    self.path,
                    json.dumps(self._doc()).encode(),
                    if_generation_match=self._generation,
                    content_type="application/json",
                )
                self._record(None)
            except storage.PreconditionFailed:
                self.lost = True
                log.error(
                    "the lease on %s was taken over: another runner resumed this job", self.job_dir
                )
                return
            except Exception as e:  # noqa: BLE001 - a missed renewal is retried at the next beat
                log.warning("lease renewal failed: %r", e)

    def release(self, outcome: str) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(storage.StorageError):
            self._record(outcome)
        if self._generation is not None and not self.lost:
            with contextlib.suppress(storage.PreconditionFailed):
                storage.delete(self.path, if_generation_match=self._generation)


@contextlib.contextmanager
def held(job_dir: str, ttl_s: float | None = None) -> Iterator[Lease]:
    """Hold the job folder's lease for the duration of the block."""
    lease = Lease(job_dir, ttl_s)
    lease.acquire()
    outcome = "failed"
    try:
        yield lease
        outcome = "succeeded"
    finally:
        lease.release(outcome)
