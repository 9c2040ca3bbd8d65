"""The pull listener against Google's Pub/Sub emulator, launching real local jobs.

One request becomes one job that runs to SUCCEEDED with its results and events; the same
request published five times, one delivery of which expires unacked and comes back, is still
one job launched once; poison messages are recorded and dead-lettered, never retried forever.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading

import pytest

from hyperbatch import storage
from hyperbatch.jobs import pubsub
from hyperbatch.jobs.events import PubSubEvents
from hyperbatch.jobs.store import JobStore
from hyperbatch.jobs.triggers.handler import TriggerHandler
from hyperbatch.jobs.triggers.messages import Delivery
from hyperbatch.jobs.triggers.pull import PullListener, dead_letter_topic_of
from hyperbatch.runners.local import LocalLauncher
from tests.jobs import control_plane as cp

pytestmark = pytest.mark.usefixtures("pubsub_server")


@contextlib.contextmanager
def listening(subscription: str, handler: TriggerHandler, **kw):
    listener = PullListener(subscription, handler, **kw)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            listener.run(stop, report_every_s=3600)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        stop.set()
        thread.join(timeout=60)
    if errors:
        raise errors[0]


@pytest.fixture
def setup(tmp_path):
    events_topic = cp.topic("events")
    events_sub = cp.subscription(events_topic, enable_message_ordering=True)
    store = JobStore(str(tmp_path / "jobs"), PubSubEvents(events_topic))
    launcher = LocalLauncher(events_topic=events_topic, heartbeat_s=0.5)
    spec = cp.spec_dict(cp.write_input(str(tmp_path / "in.jsonl")), store.root, name="pulled")
    return store, launcher, spec, events_sub


def committed_ids(store: JobStore, job_id: str) -> list[str]:
    job_dir = store.get(job_id).to_dict()["job_dir"]
    ids = []
    for f in storage.glob(storage.join(job_dir, "results", "*.jsonl")):
        ids += [json.loads(line)["custom_id"] for line in storage.read_text(f.path).splitlines()]
    return sorted(ids)


def test_a_request_runs_one_job_to_success(setup):
    store, launcher, spec, events_sub = setup
    requests = cp.topic("requests")
    sub = cp.subscription(requests, ack_deadline_seconds=30)
    handler = TriggerHandler(store, launcher, allow=[os.path.dirname(store.root)])
    with listening(sub, handler):
        pubsub.publish(requests, json.dumps(spec).encode(), {"job_id": "pulled-one"})
        done = cp.wait_for(lambda: cp.finished(store, "pulled-one"), timeout=90)
    assert done.to_dict()["state"] == "SUCCEEDED", done.to_dict()
    assert [r.job_id for r in store.list()] == ["pulled-one"]
    assert committed_ids(store, "pulled-one") == ["r0", "r1", "r2", "r3", "r4"]
    assert done.to_dict()["manifest"]["records_in"] == 5
    assert done.to_dict()["submission"]["via"] == "pubsub"
    assert done.to_dict()["launch"]["pid"]
    assert done.to_dict()["runner"] == "local"

    events = [e for e in cp.events_of(cp.pull_all(events_sub, 3)) if e["job_id"] == "pulled-one"]
    assert [e["state"] for e in events] == ["QUEUED", "RUNNING", "SUCCEEDED"]
    assert events[-1]["manifest_summary"]["results"] == 5
    assert (
        events[1]["launch_handle"]
        == f"local:{done.to_dict()['launch']['host']}:{done.to_dict()['launch']['pid']}"
    )


def test_duplicates_and_a_redelivery_make_one_job(setup):
    """Five publishes of one request (same job id), one delivery left to expire: one job."""
    store, launcher, spec, _ = setup
    requests = cp.topic("requests")
    sub = cp.subscription(requests, ack_deadline_seconds=10)
    body = json.dumps(spec).encode()
    published = [None] * 5

    def publish(i: int) -> None:
        published[i] = pubsub.publish(requests, body, {"job_id": "dup-job"})

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(published)) == 5  # five distinct messages

    # A consumer that records and launches the job from one delivery, then dies before acking.
    crashed = pubsub.subscriber().pull(request={"subscription": sub, "max_messages": 1}, timeout=10)
    (received,) = crashed.received_messages
    first = TriggerHandler(store, launcher, allow=[os.path.dirname(store.root)]).handle(
        Delivery(
            received.message.message_id,
            received.message.data,
            dict(received.message.attributes),
            subscription=sub,
        )
    )
    assert (first.kind, first.job_id) == ("submitted", "dup-job")

    handler = TriggerHandler(store, launcher, allow=[os.path.dirname(store.root)])
    seen: list[str] = []
    original = handler.handle

    def recording(delivery: Delivery):
        seen.append(delivery.message_id)
        return original(delivery)

    handler.handle = recording
    with listening(sub, handler):
        # the four others now, the expired one after its 10 s ack deadline
        cp.wait_for(lambda: received.message.message_id in seen, timeout=40, every=0.2)
        cp.wait_for(lambda: cp.finished(store, "dup-job"), timeout=60)
    assert sorted(seen) == sorted(published)
    assert handler.counts == {"duplicate": 5}
    jobs = store.list()
    assert [r.job_id for r in jobs] == ["dup-job"]
    doc = jobs[0].to_dict()
    assert doc["state"] == "SUCCEEDED"
    assert [h["state"] for h in doc["history"]] == ["QUEUED", "RUNNING", "SUCCEEDED"]
    assert committed_ids(store, "dup-job") == ["r0", "r1", "r2", "r3", "r4"]


def test_poison_is_recorded_and_dead_lettered(setup, tmp_path):
    store, _, spec, _ = setup
    requests, dead = cp.topic("requests"), cp.topic("dead")
    dead_sub = cp.subscription(dead)
    policy = {"dead_letter_topic": dead, "max_delivery_attempts": 5}
    sub = cp.subscription(requests, dead_letter_policy=policy)
    assert dead_letter_topic_of(sub) == dead
    handler = TriggerHandler(
        store,
        None,
        dead_letter_topic=dead_letter_topic_of(sub),
        allow=[os.path.dirname(store.root)],
    )
    with listening(sub, handler):
        pubsub.publish(requests, b"this is not a job spec")
        pubsub.publish(requests, json.dumps({**spec, "batch_size": -1}).encode())
        pubsub.publish(requests, json.dumps(spec).encode(), {"job_id": "Not Valid"})
        got = cp.pull_all(dead_sub, 3)
        cp.wait_for(lambda: handler.counts["rejected"] == 3)
    reasons = sorted(m.attributes["hyperbatch_rejected_reason"] for m in got)
    assert "batch_size: must be between 1 and 4096" in reasons[0]
    assert "job id 'Not Valid'" in reasons[1]
    assert "expected a job spec" in reasons[2]
    assert {m.data for m in got} >= {b"this is not a job spec"}
    assert all(m.attributes["hyperbatch_source_subscription"] == sub for m in got)
    assert handler.counts == {"rejected": 3}  # each handled once: acked, not redelivered
    recorded = store.rejected()
    assert len(recorded) == 3
    assert all(r["reason"] and r["message_id"] for r in recorded)
    assert store.list() == []


def test_a_message_that_always_fails_is_dead_lettered_by_pubsub(setup):
    """The subscription's dead-letter policy bounds retries of failures we cannot classify."""
    store, _, spec, _ = setup
    requests, dead = cp.topic("requests"), cp.topic("dead")
    dead_sub = cp.subscription(dead)
    sub = cp.subscription(
        requests, dead_letter_policy={"dead_letter_topic": dead, "max_delivery_attempts": 5}
    )

    class Broken(TriggerHandler):
        def handle(self, delivery):
            raise ConnectionError("the store is unreachable")

    with listening(sub, Broken(store)) as listener:
        pubsub.publish(requests, json.dumps(spec).encode(), {"job_id": "never"})
        (got,) = cp.pull_all(dead_sub, 1, timeout=60)
    assert got.attributes["job_id"] == "never"
    assert listener.nacked == 5
