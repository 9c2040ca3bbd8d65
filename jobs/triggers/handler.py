"""One delivery of a trigger message -> a recorded (and launched) job, or a recorded rejection.

``TriggerHandler.handle`` returns an Outcome whose ``ack`` says whether the message may be
acknowledged: true once the job is durably recorded (and, with a launcher, launched or owned by a
live launcher), or once a message that can never succeed is recorded under
``<root>/_rejected/`` and forwarded to the dead-letter topic with its reason. Any other failure
(a transient error that outlived its retries, a bug) raises: the caller nacks, Pub/Sub delivers
again, and the subscription's own dead-letter policy bounds the attempts.

Budgets: a job without ``max_cost_usd`` gets the trigger's default cap, if it has one (the job id
does not change: a budget is not part of the spec's digest). A new job with a cap whose low
estimate is above it is rejected like an invalid spec, the estimate in the reason; one that
cannot be estimated here is recorded, and its run stops before it passes the cap.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import Counter
from collections.abc import Sequence

from hyperbatch.jobs import estimate, pubsub
from hyperbatch.jobs.policy import AccessPolicy
from hyperbatch.jobs.spec import JobIdConflict
from hyperbatch.jobs.store import JobStore
from hyperbatch.jobs.submit import DEFAULT_CLAIM_TTL_S, JobRequest, Launcher, submit
from hyperbatch.jobs.triggers.messages import Delivery, Ignored, Rejected, interpret

log = logging.getLogger(__name__)

#: Attribute values are limited to 1024 bytes by Pub/Sub.
_MAX_ATTRIBUTE = 1000


@dataclasses.dataclass(frozen=True)
class Outcome:
    ack: bool
    kind: str  # submitted | duplicate | ignored | rejected
    job_id: str | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def _clip(text: str, limit: int = _MAX_ATTRIBUTE) -> str:
    return text.encode()[:limit].decode(errors="ignore")


class TriggerHandler:
    """Shared by the pull listener and the push endpoint."""

    def __init__(
        self,
        store: JobStore,
        launcher: Launcher | None = None,
        *,
        watch: Sequence[str] = (),
        dead_letter_topic: str | None = None,
        claim_ttl_s: float = DEFAULT_CLAIM_TTL_S,
        allow: Sequence[str] = (),
        default_max_cost_usd: float | None = None,
    ):
        self.store = store
        self.launcher = launcher
        self.watch = tuple(watch)
        #: where recorded jobs may read and write: ``allow``, by default the store's bucket
        self.policy = AccessPolicy.for_store(store.root, allow)
        self.dead_letter_topic = pubsub.topic_path(dead_letter_topic) if dead_letter_topic else None
        self.claim_ttl_s = claim_ttl_s
        self.default_max_cost_usd = default_max_cost_usd
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, outcome: Outcome) -> Outcome:
        with self._lock:
            self.counts[outcome.kind] += 1
        return outcome

    def handle(self, delivery: Delivery) -> Outcome:
        try:
            found = interpret(
                delivery,
                self.watch,
                exclude=[self.store.root.rstrip("/") + "/"],
                policy=self.policy,
            )
        except Rejected as e:
            return self._count(self.reject(delivery, e.reason))
        if isinstance(found, Ignored):
            log.info("message %s ignored: %s", delivery.message_id, found.reason)
            return self._count(Outcome(True, "ignored", None, found.reason))
        found = self.with_budget(found)
        try:
            self.check_budget(found)
        except estimate.BudgetExceeded as e:
            return self._count(self.reject(delivery, str(e), job_id=found.job_id))
        try:
            done = submit(self.store, found, self.launcher, claim_ttl_s=self.claim_ttl_s)
        except JobIdConflict as e:
            return self._count(self.reject(delivery, str(e), job_id=found.job_id))
        kind = "submitted" if done.created else "duplicate"
        log.info(
            "message %s: job %s %s (%s)",
            delivery.message_id,
            found.job_id,
            kind,
            done.record.state.value,
        )
        return self._count(Outcome(True, kind, found.job_id, done.record.state.value))

    def with_budget(self, request: JobRequest) -> JobRequest:
        """The request with the trigger's default cap when its spec sets none."""
        if request.spec.max_cost_usd is not None or self.default_max_cost_usd is None:
            return request
        spec = dataclasses.replace(request.spec, max_cost_usd=self.default_max_cost_usd)
        return dataclasses.replace(request, spec=spec)

    def check_budget(self, request: JobRequest) -> None:
        """BudgetExceeded for a new job whose low estimate is above its cap (a job already
        recorded is a duplicate delivery: it was checked then)."""
        if request.spec.max_cost_usd is None or self.store.find(request.job_id) is not None:
            return
        try:
            estimate.check_budget(request.spec, root=self.store.root)
        except estimate.EstimateUnavailable as e:
            log.warning(
                "job %s: its max_cost_usd could not be checked before launch (%s); its run "
                "stops before passing it",
                request.job_id,
                e,
            )

    def reject(self, delivery: Delivery, reason: str, job_id: str | None = None) -> Outcome:
        """Record why the message can never succeed, forward it to the dead-letter topic, ack."""
        where = self.store.reject(delivery.key, reason, {**delivery.describe(), "job_id": job_id})
        log.warning("message %s rejected: %s", delivery.message_id, reason)
        if self.dead_letter_topic:
            attributes = dict(delivery.attributes)
            attributes.update({
                "hyperbatch_rejected_reason": _clip(reason),
                "hyperbatch_source_message_id": delivery.message_id,
                "hyperbatch_rejection": _clip(where),
            })  # fmt: skip
            if delivery.subscription:
                attributes["hyperbatch_source_subscription"] = _clip(delivery.subscription)
            pubsub.publish(self.dead_letter_topic, delivery.data, attributes)
        return Outcome(True, "rejected", job_id, reason)
