"""A spec file dropped in a bucket starts a job: fake-gcs-server publishes the bucket's
OBJECT_FINALIZE notifications to the Pub/Sub emulator, as Cloud Storage does."""

from __future__ import annotations

import json
import os
import threading

import pytest
import yaml

from hyperbatch import storage
from hyperbatch.jobs.store import JobStore
from hyperbatch.jobs.triggers.handler import TriggerHandler
from hyperbatch.jobs.triggers.messages import normalize_watch_prefix
from hyperbatch.jobs.triggers.pull import PullListener
from hyperbatch.runners.local import LocalLauncher
from tests import emulators
from tests.jobs import control_plane as cp


@pytest.fixture(scope="module")
def notifying_bucket(pubsub_server):
    """A bucket on a fake-gcs-server that announces finalized objects on a topic."""
    topic = cp.topic("gcs-notifications")
    project, name = topic.split("/")[1], topic.split("/")[3]
    with emulators.fake_gcs_server(
        "-event.pubsub-project-id",
        project,
        "-event.pubsub-topic",
        name,
        "-event.list",
        "finalize,delete",
    ) as url:
        previous = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = url
        storage.gcs_client.cache_clear()
        storage.gcs_client().create_bucket("drop-box")
        try:
            yield "gs://drop-box", topic
        finally:
            if previous is None:
                os.environ.pop("STORAGE_EMULATOR_HOST", None)
            else:
                os.environ["STORAGE_EMULATOR_HOST"] = previous
            storage.gcs_client.cache_clear()


def test_a_dropped_spec_file_runs_a_job(notifying_bucket):
    bucket, topic = notifying_bucket
    sub = cp.subscription(topic, ack_deadline_seconds=30)
    store = JobStore(f"{bucket}/jobs")
    handler = TriggerHandler(
        store, LocalLauncher(heartbeat_s=0.5), watch=[normalize_watch_prefix(f"{bucket}/incoming")]
    )
    listener = PullListener(sub, handler)
    stop = threading.Event()
    thread = threading.Thread(target=listener.run, args=(stop, 3600), daemon=True)
    thread.start()
    try:
        cp.write_input(f"{bucket}/incoming/in.jsonl", n=3)  # a data file: ignored
        spec = cp.spec_dict("in.jsonl", f"{bucket}/jobs", name="dropped")  # relative to the file
        generation = storage.write_bytes(
            f"{bucket}/incoming/job.yaml", yaml.safe_dump(spec).encode()
        )
        jobs = cp.wait_for(lambda: store.list(), timeout=30)
        job_id = jobs[0].job_id
        done = cp.wait_for(lambda: cp.finished(store, job_id), timeout=90)
        # the job's own files (results, status.json, ...) were notified too, and ignored
        cp.wait_for(lambda: handler.counts["ignored"] >= 5, timeout=30)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert [r.job_id for r in store.list()] == [job_id]
    assert done.to_dict()["state"] == "SUCCEEDED", done.to_dict()
    assert done.to_dict()["submission"]["object"] == f"{bucket}/incoming/job.yaml"
    assert done.to_dict()["submission"]["generation"] == str(generation)
    assert done.to_dict()["manifest"]["records_in"] == 3
    results = storage.glob(f"{done.to_dict()['job_dir']}/results/*.jsonl")
    ids = sorted(
        json.loads(line)["custom_id"]
        for f in results
        for line in storage.read_text(f.path).splitlines()
    )
    assert ids == ["r0", "r1", "r2"]
    assert handler.counts["submitted"] == 1
    assert handler.counts.get("rejected", 0) == 0
