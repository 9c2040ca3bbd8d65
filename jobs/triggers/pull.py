"""The pull listener: a streaming pull on a subscription, each message through TriggerHandler.

A message is acked only after the handler says so (the job is recorded, or the rejection is
recorded and dead-lettered); on any failure it is nacked and Pub/Sub delivers it again. Flow
control bounds how many messages are held at once, so memory stays flat under a burst. The
client library extends the ack deadline of messages still being handled. On SIGTERM/SIGINT the
listener stops pulling and waits for the messages in hand.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
from typing import Any

from hyperbatch.jobs import pubsub
from hyperbatch.jobs.triggers.handler import TriggerHandler
from hyperbatch.jobs.triggers.messages import Delivery

log = logging.getLogger(__name__)


def dead_letter_topic_of(subscription: str) -> str | None:
    """The dead-letter topic configured on a subscription, if any (and if we may look)."""
    from google.api_core import exceptions

    try:
        with pubsub.credentials_checked():
            sub = pubsub.subscriber().get_subscription(request={"subscription": subscription})
    except exceptions.PermissionDenied as e:
        log.warning(
            "cannot read %s's dead-letter policy (%s); pass --dead-letter-topic",
            subscription,
            e.message,
        )
        return None
    return sub.dead_letter_policy.dead_letter_topic or None


class PullListener:
    def __init__(
        self,
        subscription: str,
        handler: TriggerHandler,
        *,
        max_messages: int = 100,
        threads: int = 8,
    ):
        self.subscription = pubsub.subscription_path(subscription)
        self.handler = handler
        self.max_messages = max_messages
        self.threads = threads
        self.nacked = 0
        self._lock = threading.Lock()
        self._future: Any = None

    def _callback(self, message: Any) -> None:
        delivery = Delivery(
            message_id=message.message_id,
            data=message.data,
            attributes=dict(message.attributes),
            publish_time=message.publish_time.isoformat() if message.publish_time else None,
            subscription=self.subscription,
            delivery_attempt=message.delivery_attempt,
        )
        try:
            outcome = self.handler.handle(delivery)
        except Exception:
            log.exception("message %s not handled; it will be delivered again", message.message_id)
            with self._lock:
                self.nacked += 1
            message.nack()
            return
        if outcome.ack:
            message.ack()
        else:
            message.nack()

    def start(self) -> None:
        from google.cloud import pubsub_v1
        from google.cloud.pubsub_v1.subscriber.scheduler import ThreadScheduler

        flow = pubsub_v1.types.FlowControl(max_messages=self.max_messages)
        executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.threads, thread_name_prefix="hyperbatch-trigger"
        )
        self._future = pubsub.subscriber().subscribe(
            self.subscription,
            self._callback,
            flow_control=flow,
            scheduler=ThreadScheduler(executor=executor),
            await_callbacks_on_shutdown=True,
        )
        log.info("listening on %s (store %s)", self.subscription, self.handler.store.root)

    def stop(self) -> None:
        if self._future is not None:
            self._future.cancel()  # stop pulling; messages in hand are finished first
            with contextlib.suppress(concurrent.futures.CancelledError):
                self._future.result(timeout=60)

    def run(self, stop: threading.Event, report_every_s: float = 30.0) -> None:
        """Listen until ``stop`` is set (or the stream fails for good: then raise)."""
        self.start()
        last = time.monotonic()
        try:
            while not stop.wait(0.2):
                if self._future.done():
                    with pubsub.credentials_checked():
                        self._future.result()  # raises the stream's error
                    return
                if time.monotonic() - last >= report_every_s:
                    last = time.monotonic()
                    log.info("so far: %s", self.summary())
        finally:
            self.stop()

    def summary(self) -> dict[str, int]:
        return {**self.handler.counts, "nacked": self.nacked}
