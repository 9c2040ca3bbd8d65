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
from collections.abc import Mapping
from typing import Any

import fastavro.validation

from hyperbatch.jobs import pubsub
from hyperbatch.jobs.store import Record
from hyperbatch.schemas import avro

log = logging.getLogger(__name__)
EVENT_TYPE = "dev.hyperbatch.job.state_changed"


def manifest_summary(manifest: Mapping[str, Any], job_dir: str) -> dict[str, Any]:
    """The part of a cost manifest that travels with the final status and event."""
    from hyperbatch import storage

    return {
        "status": manifest["status"],
        "records_in": int(manifest["records_in"]),
        "results": int(manifest["results"]),
        "errors": int(manifest["errors"]),
        "prompt_tokens": int(manifest["prompt_tokens"]),
        "completion_tokens": int(manifest["completion_tokens"]),
        "wall_seconds": float(manifest["wall_seconds"]),
        "accelerator_seconds": float(manifest["accelerator_seconds"]),
        "cost_usd": float(manifest["cost_usd"]),
        "usd_per_1k_tokens": float(manifest["usd_per_1k_tokens"]),
        "manifest": storage.join(job_dir, "manifest.json"),
        "results_glob": manifest["outputs"]["results"],
        "errors_glob": manifest["outputs"]["errors"],
    }


def launch_handle(launch: Mapping[str, Any] | None) -> str | None:
    if not launch:
        return None
    if launch.get("launcher") == "local" and launch.get("pid"):
        return f"local:{launch.get('host')}:{launch['pid']}"
    if launch.get("launcher") == "dataflow" and launch.get("dataflow_job_id"):
        return (
            f"dataflow:{launch.get('project')}/{launch.get('region')}/{launch['dataflow_job_id']}"
        )
    return None


def event_for(record: Record, previous: str | None, status_url: str) -> dict[str, Any]:
    doc = record.doc
    state = doc["state"]
    message = doc.get("error") if state == "FAILED" else None
    if state == "CANCELLED":
        message = f"cancelled by {doc['history'][-1].get('by')}"
    event = {
        "event_id": f"{doc['job_id']}/{len(doc.get('history', []))}",
        "job_id": doc["job_id"],
        "job_name": doc["name"],
        "state": state,
        "previous_state": previous,
        "time": doc["updated_at"],
        "job_dir": doc["job_dir"],
        "status_url": status_url,
        "submitted_by": doc.get("submitted_by"),
        "runner": doc.get("runner"),
        "launch_handle": launch_handle(doc.get("launch")),
        "message": message,
        "manifest_summary": doc.get("manifest") if state in ("SUCCEEDED", "FAILED") else None,
    }
    fastavro.validation.validate(event, avro.schema("job_event"), raise_errors=True)
    return event


class PubSubEvents:
    """Publishes each state change of a store's jobs to ``topic``."""

    def __init__(self, topic: str):
        self.topic = pubsub.topic_path(topic)

    def publish(self, record: Record, previous: str | None) -> None:
        from hyperbatch.jobs.store import STATUS_FILE

        status_url = f"{record.doc['root'].rstrip('/')}/{record.job_id}/{STATUS_FILE}"
        event = event_for(record, previous, status_url)
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
        from hyperbatch.jobs.store import STATUS_FILE

        url = f"{record.doc['root']}/{record.job_id}/{STATUS_FILE}"
        with self._lock:
            self.events.append(event_for(record, previous, url))


def sink(topic: str | None) -> PubSubEvents | None:
    return PubSubEvents(topic) if topic else None
