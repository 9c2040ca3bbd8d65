"""Helpers for the control-plane tests: tiny fake-engine specs, Pub/Sub resources, waiting."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from hyperbatch import storage
from hyperbatch.jobs import spec as job_spec
from tests.records import jsonl, openai_chat

PROJECT = "hyperbatch-test"


def write_input(where: str, n: int = 5, prefix: str = "r") -> str:
    """``n`` chat requests ("r0".."r{n-1}") at ``where`` (a local path or gs:// URL)."""
    storage.write_bytes(where, jsonl([openai_chat(f"{prefix}{i}", f"w{i} x y") for i in range(n)]))
    return where


def spec_dict(input_path: str, output: str, name: str = "cp", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "task": "chat",
        "input": input_path,
        "input_format": "openai",
        "output": output,
        "model": "fake",
        "engine": "fake",
        "records_per_shard": 2,
        "sampling": {"max_tokens": 2},
        **extra,
    }


def make_spec(input_path: str, output: str, **extra: Any) -> job_spec.JobSpec:
    return job_spec.validate(spec_dict(input_path, output, **extra))


def wait_for(what: Callable[[], Any], timeout: float = 30.0, every: float = 0.05) -> Any:
    """Poll until ``what()`` is truthy; returns it (fails the test on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def finished(store: Any, job_id: str) -> Any:
    """The job's record once it is in a final state (for ``wait_for``), else None."""
    record = store.find(job_id)
    return record if record is not None and record.state.terminal else None


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def topic(name: str) -> str:
    from hyperbatch.jobs import pubsub

    path = f"projects/{PROJECT}/topics/{unique(name)}"
    pubsub.publisher().create_topic(name=path)
    return path


def subscription(topic_path: str, **settings: Any) -> str:
    from hyperbatch.jobs import pubsub

    path = f"projects/{PROJECT}/subscriptions/{unique('sub')}"
    pubsub.subscriber().create_subscription(request={"name": path, "topic": topic_path, **settings})
    return path


def pull_all(sub: str, expect: int, timeout: float = 20.0) -> list[Any]:
    """Pull (and ack) until ``expect`` messages arrived; returns the received messages."""
    from hyperbatch.jobs import pubsub

    got: list[Any] = []

    def more() -> bool:
        resp = pubsub.subscriber().pull(
            request={"subscription": sub, "max_messages": 100}, timeout=5
        )
        if resp.received_messages:
            pubsub.subscriber().acknowledge(
                request={"subscription": sub,
                         "ack_ids": [m.ack_id for m in resp.received_messages]}
            )  # fmt: skip
            got.extend(m.message for m in resp.received_messages)
        return len(got) >= expect

    wait_for(more, timeout=timeout, every=0.1)
    return got


def events_of(messages: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(m.data) for m in messages]
