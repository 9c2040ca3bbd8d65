"""Pub/Sub resource names, clients (the emulator via PUBSUB_EMULATOR_HOST) and a durable publish.

``publish`` returns only once Pub/Sub has accepted the message (its id is known), so a caller
that acks a message after forwarding it, or reports a state after announcing it, never loses it.
Transient errors are retried by ``CLOUD_RETRY``; no usable credentials is
``storage.CredentialsError``, with the paragraph every Google service shares.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import Any

from hyperbatch import storage
from hyperbatch.retry import CLOUD_RETRY

_TOPIC_RE = re.compile(r"^projects/[^/]+/topics/[^/]+$")
_SUBSCRIPTION_RE = re.compile(r"^projects/[^/]+/subscriptions/[^/]+$")
_SHORT_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._~+%-]{2,254}$")

#: How long one publish may wait for Pub/Sub to accept the message.
PUBLISH_TIMEOUT_S = 60.0


class PubSubNameError(ValueError):
    """A topic or subscription name that cannot be used; the message says how to write it."""


def default_project() -> str | None:
    return os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("CLOUDSDK_CORE_PROJECT")


def _full_name(kind: str, name: str, project: str | None, full: re.Pattern[str]) -> str:
    if full.match(name):
        return name
    if not _SHORT_NAME_RE.match(name):
        raise PubSubNameError(
            f"{name!r} is not a Pub/Sub {kind} name: use projects/PROJECT/{kind}s/NAME or NAME"
        )
    project = project or default_project()
    if not project:
        raise PubSubNameError(
            f"{kind} {name!r} has no project: write projects/PROJECT/{kind}s/{name} "
            "or set GOOGLE_CLOUD_PROJECT"
        )
    return f"projects/{project}/{kind}s/{name}"


def topic_path(name: str, project: str | None = None) -> str:
    """``projects/P/topics/T`` from itself or from ``T`` and the project."""
    return _full_name("topic", name, project, _TOPIC_RE)


def subscription_path(name: str, project: str | None = None) -> str:
    return _full_name("subscription", name, project, _SUBSCRIPTION_RE)


@functools.cache
def publisher(ordered: bool = False) -> Any:
    """The publisher client; CredentialsError if there are no usable credentials."""
    from google.cloud import pubsub_v1

    options = pubsub_v1.types.PublisherOptions(enable_message_ordering=ordered)
    # Small batches, short latency: these are control messages, not a data stream.
    batch = pubsub_v1.types.BatchSettings(max_messages=100, max_latency=0.005)
    return pubsub_v1.PublisherClient(
        batch_settings=batch, publisher_options=options, **_credentials()
    )


@functools.cache
def subscriber() -> Any:
    """The subscriber client; CredentialsError if there are no usable credentials."""
    from google.cloud import pubsub_v1

    return pubsub_v1.SubscriberClient(**_credentials())


#: The service named in the no-usable-credentials paragraph.
SERVICE = "Pub/Sub"


def _credentials() -> dict[str, Any]:
    """The clients' credentials, refreshed once (``storage.google_credentials``), so a key
    that is missing, malformed, expired or revoked is one paragraph at the first call; the
    emulator needs none."""
    if os.environ.get("PUBSUB_EMULATOR_HOST"):
        return {}
    return {"credentials": storage.google_credentials(SERVICE)}


def credentials_checked() -> Any:
    """Around a Pub/Sub call: a 401 or a failed refresh becomes the CredentialsError paragraph."""
    return storage.credentials_checked(SERVICE)


def reset_clients() -> None:
    """Forget cached clients (after PUBSUB_EMULATOR_HOST changes, e.g. in tests)."""
    publisher.cache_clear()
    subscriber.cache_clear()


@CLOUD_RETRY
def publish(
    topic: str,
    data: bytes,
    attributes: Mapping[str, str] | None = None,
    ordering_key: str = "",
) -> str:
    """Publish one message and wait until Pub/Sub has it; returns its message id."""
    client = publisher(ordered=bool(ordering_key))
    future = client.publish(topic, data, ordering_key=ordering_key, **dict(attributes or {}))
    try:
        with credentials_checked():
            return future.result(timeout=PUBLISH_TIMEOUT_S)
    except Exception:
        if ordering_key:
            # An ordered key is paused after a failure until resumed; the retry needs it open.
            client.resume_publish(topic, ordering_key)
        raise
