"""The job store on a local directory and on fake-gcs-server (which honours preconditions).

The compare-and-swap tests race real threads against the same status.json: of writers that read
the same generation exactly one may win, and no update may be lost.
"""

from __future__ import annotations

import dataclasses
import json
import threading

import fastavro.validation
import pytest

from hyperbatch import storage
from hyperbatch.jobs.events import CollectedEvents
from hyperbatch.jobs.spec import JobIdConflict
from hyperbatch.jobs.status import ManifestSummary
from hyperbatch.jobs.store import IllegalTransition, JobNotFound, JobState, JobStore
from hyperbatch.schemas import avro
from hyperbatch.schemas.records import Counters
from tests.jobs.control_plane import make_spec, write_input


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "jobs")
    return request.getfixturevalue("gcs_bucket") + "/jobs"


@pytest.fixture
def spec(tmp_path, root):
    return make_spec(write_input(str(tmp_path / "in.jsonl")), root)


def new_store(root, events=None) -> JobStore:
    return JobStore(root, events)


def create(store, spec, job_id="job-a", **kw):
    return store.create(
        spec, job_id, submitted_by="ann", submission={"via": "test"}, runner="local", **kw
    )


def test_create_records_spec_and_status_once(root, spec):
    store = new_store(root)
    record, created = create(store, spec)
    assert created
    assert record.state == JobState.QUEUED
    again, created_again = create(store, spec)
    assert not created_again
    assert again.generation == record.generation

    status = json.loads(storage.read_bytes(storage.join(root, "job-a", "status.json")))
    assert status["job_id"] == "job-a"
    assert status["state"] == "QUEUED"
    assert status["submitted_by"] == "ann"
    assert status["job_dir"] == storage.join(root, "job-a")
    assert [h["state"] for h in status["history"]] == ["QUEUED"]
    body = json.loads(storage.read_bytes(storage.join(root, "job-a", "spec.json")))
    assert body["spec_digest"] == spec.digest
    assert body["spec"] == spec.to_dict()
    assert store.spec("job-a") == spec

    other = make_spec(spec.input, root, batch_size=7)
    with pytest.raises(JobIdConflict, match="already used by another spec"):
        create(store, other)
    with pytest.raises(JobNotFound, match="no job 'nope'"):
        store.get("nope")


def test_states_follow_the_lifecycle(root, spec):
    events = CollectedEvents()
    store = new_store(root, events)
    create(store, spec)
    with pytest.raises(IllegalTransition, match="QUEUED; it cannot become SUCCEEDED"):
        store.transition("job-a", JobState.SUCCEEDED)
    running = store.transition("job-a", JobState.RUNNING, by="proc", launch={"pid": 42})
    assert running.to_dict()["started_at"]
    assert running.to_dict()["launch"] == {"pid": 42}
    summary = {
        "status": "SUCCEEDED",
        "records_in": 5,
        "results": 5,
        "errors": 0,
        "prompt_tokens": 15,
        "completion_tokens": 10,
        "wall_seconds": 1.0,
        "accelerator_seconds": 0.5,
        "cost_usd": 0.01,
        "usd_per_1k_tokens": 0.4,
        "manifest": "m.json",
        "results_glob": "r/*",
        "errors_glob": "e/*",
        "vectors_glob": None,
        "records_left": 0,
        "max_cost_usd": None,
    }
    done = store.transition(
        "job-a", JobState.SUCCEEDED, manifest=ManifestSummary.from_json(summary)
    )
    assert done.to_dict()["finished_at"]
    assert done.to_dict()["manifest"] == summary
    for state in JobState:
        if state != JobState.QUEUED:  # an ended job only goes back to the queue (a resume)
            with pytest.raises(IllegalTransition):
                store.transition("job-a", state)
    assert [h["state"] for h in done.to_dict()["history"]] == ["QUEUED", "RUNNING", "SUCCEEDED"]
    assert done.to_dict()["history"][1]["by"] == "proc"

    # every change was announced, as a JobEvent of the schema, in order
    assert [(e["state"], e["previous_state"]) for e in events.events] == [
        ("QUEUED", None),
        ("RUNNING", "QUEUED"),
        ("SUCCEEDED", "RUNNING"),
    ]
    assert [e["event_id"] for e in events.events] == ["job-a/1", "job-a/2", "job-a/3"]
    assert events.events[-1]["manifest_summary"] == summary
    for e in events.events:
        assert fastavro.validation.validate(e, avro.schema("job_event"))


def race(n: int, fn) -> list:
    """Run ``fn(i)`` in ``n`` threads released at the same instant; returns results/exceptions."""
    barrier = threading.Barrier(n)
    out: list = [None] * n

    def target(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fn(i)
        except Exception as e:  # noqa: BLE001 - collected for the assertions
            out[i] = e

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_two_writers_never_both_win(root, spec):
    """Racing transitions out of QUEUED: exactly one wins, the others see the winner's state."""
    store = new_store(root)
    targets = [JobState.RUNNING, JobState.CANCELLED, JobState.FAILED]
    for round_ in range(4):
        job_id = f"race-{round_}"
        create(store, spec, job_id)
        outcomes = race(
            6,
            lambda i, job_id=job_id: store.transition(
                job_id, targets[i % 3], by=f"w{i}", expect=[JobState.QUEUED]
            ),
        )
        winners = [o for o in outcomes if not isinstance(o, Exception)]
        losers = [o for o in outcomes if isinstance(o, Exception)]
        assert len(winners) == 1, outcomes
        assert all(isinstance(e, IllegalTransition) for e in losers), losers
        final = store.get(job_id)
        assert final.state == winners[0].state
        assert [h["state"] for h in final.to_dict()["history"]] == [
            "QUEUED",
            winners[0].state.value,
        ]


def test_concurrent_creations_create_one_job(root, spec):
    store = new_store(root)
    outcomes = race(6, lambda i: create(store, spec, "same-id"))
    assert all(not isinstance(o, Exception) for o in outcomes), outcomes
    assert sum(created for _, created in outcomes) == 1
    assert len({r.generation for r, _ in outcomes}) == 1


def test_no_update_is_lost(root, spec):
    """Read-modify-write by compare-and-swap: 6 threads x 4 increments = 24."""
    store = new_store(root)
    create(store, spec)

    def bump(doc):
        done = doc.progress.records if doc.progress else 0
        return dataclasses.replace(doc, progress=Counters(records=done + 1))

    def work(_):
        for _ in range(4):
            store.update("job-a", bump)

    assert not [o for o in race(6, work) if isinstance(o, Exception)]
    assert store.get("job-a").status.progress.records == 24


def test_a_stale_generation_never_writes(root, spec):
    store = new_store(root)
    record, _ = create(store, spec)
    store.update("job-a", lambda d: dataclasses.replace(d, error="fresh"))
    with pytest.raises(storage.PreconditionFailed):
        storage.write_bytes(
            store.status_path("job-a"), b"{}", if_generation_match=record.generation
        )
    assert store.get("job-a").to_dict()["error"] == "fresh"


def test_list_newest_first_with_filters(root, spec):
    store = new_store(root)
    for i in range(4):
        create(store, spec, f"job-{i}")
    store.transition("job-1", JobState.CANCELLED)
    store.reject("m-123", "not a spec", {"message_id": "123"})
    assert [r.job_id for r in store.list()] == ["job-3", "job-2", "job-1", "job-0"]
    assert [r.job_id for r in store.list(limit=2)] == ["job-3", "job-2"]
    assert [r.job_id for r in store.list(states=["CANCELLED"])] == ["job-1"]
    assert [(r["key"], r["reason"]) for r in store.rejected()] == [("m-123", "not a spec")]


@pytest.mark.parametrize("bad", ["../../other/job", "a/b", "UPPER", "-x", "x" * 64, "", "job/"])
def test_ids_that_are_not_job_ids_name_no_path(tmp_path, bad):
    """Every command that takes a job id (describe, cancel, watch, results) reaches the store
    through job_folder: an id that could escape the root is refused, not read."""
    from hyperbatch.jobs.spec import SpecError

    (tmp_path / "other" / "job").mkdir(parents=True)
    (tmp_path / "other" / "job" / "status.json").write_text("{}")
    store = JobStore(str(tmp_path / "root"))
    with pytest.raises(SpecError, match="use 1-63 lowercase letters"):
        store.get(bad)
    with pytest.raises(SpecError):
        store.transition(bad, JobState.CANCELLED)
