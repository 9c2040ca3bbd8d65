"""Job events: every state change as a ``JobEvent`` (schemas/job_event.avsc) on the status topic.

Events are JSON documents of the schema (checked before sending), with attributes ``job_id``,
``state`` and ``event_type`` for subscription filters, and the job id as ordering key so one
job's events arrive in order on an ordered subscription. Delivery is at least once: consumers
deduplicate by ``event_id`` (the job id and the state's position in its history).

The status document in the store is the truth; an event is sent after the state is written. If
Pub/Sub stays unreachable through the retries the event is lost and the failure is logged, the
state stands (a job must not fail because a notification could not be sent).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import fastavro.validation

from hyperbatch import storage
from hyperbatch.jobs import pubsub
from hyperbatch.jobs.layout import JobFolder
from hyperbatch.jobs.status import Launch
from hyperbatch.jobs.store import Record
from hyperbatch.schemas import avro

log = logging.getLogger(__name__)
EVENT_TYPE = "dev.hyperbatch.job.state_changed"


def launch_handle(launch: Launch | None) -> str | None:
    if not launch:
        return None
    if launch.launcher == "local" and launch.pid:
        return f"local:{launch.host}:{launch.pid}"
    if launch.launcher == "dataflow" and launch.dataflow_job_id:
        return f"dataflow:{launch.project}/{launch.region}/{launch.dataflow_job_id}"
    return None


def status_url(record: Record) -> str:
    return JobFolder(storage.join(record.status.root, record.job_id)).status


def event_for(record: Record, previous: str | None) -> dict[str, Any]:
    doc = record.status
    state = doc.state.value
    message = doc.error if state in ("FAILED", "STOPPED_BUDGET") else None
    if state == "CANCELLED":
        message = f"cancelled by {doc.history[-1].by}"
    summary = doc.manifest.to_json() if doc.manifest else None
    event = {
        "event_id": f"{doc.job_id}/{len(doc.history)}",
        "job_id": doc.job_id,
        "job_name": doc.name,
        "state": state,
        "previous_state": previous,
        "time": doc.updated_at,
        "job_dir": doc.job_dir,
        "status_url": status_url(record),
        "submitted_by": doc.submitted_by,
        "runner": doc.runner,
        "launch_handle": launch_handle(doc.launch),
        "message": message,
        "manifest_summary": summary if state in ("SUCCEEDED", "FAILED", "STOPPED_BUDGET") else None,
    }
    fastavro.validation.validate(event, avro.schema("job_event"), raise_errors=True)
    return event


class PubSubEvents:
    """Publishes each state change of a store's jobs to ``topic``."""

    def __init__(self, topic: str):
        self.topic = pubsub.topic_path(topic)

    def publish(self, record: Record, previous: str | None) -> None:
        event = event_for(record, previous)
        attributes = {"job_id": event["job_id"], "state": event["state"], "event_type": EVENT_TYPE}
        try:
            pubsub.publish(
                self.topic,
                json.dumps(event, separators=(",", ":")).encode(),
                attributes,
                ordering_key=event["job_id"],
            )
        except Exception as e:  # noqa: BLE001 - the state is written; the event is best effort
            log.error(
                "could not publish %s of job %s to %s: %r",
                event["state"],
                event["job_id"],
                self.topic,
                e,
            )


class CollectedEvents:
    """Keeps events in memory (tests, and callers that want to show what would be sent)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[dict[str, Any]] = []

    def publish(self, record: Record, previous: str | None) -> None:
        with self._lock:
            self.events.append(event_for(record, previous))


def sink(topic: str | None) -> PubSubEvents | None:
    return PubSubEvents(topic) if topic else None
