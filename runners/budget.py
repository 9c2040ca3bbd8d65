"""A running job's budget: stop taking shards before the projected cost passes ``max_cost_usd``.

Before a worker process serves a shard it asks ``JobBudget.admit``. The projected total, in
accelerator seconds, is

    committed   what every committed shard of the job was charged (all attempts, read from the
                commit markers) plus the time earlier attempts lost (``manifest.charged_seconds``)
  + in flight   for each shard this process is serving: the larger of what it has been charged
                so far and what it is expected to cost
  + this shard  what it is expected to cost

A shard is expected to cost ``rate`` seconds per record, plus the engine's load and warmup for
the first shard a process serves. ``rate`` is measured on the job's committed shards (their
accelerator seconds less their load and warmup, per record) once the shards that were in flight
while the engine loaded have committed (before that a shard's time holds part of the load);
until then it is the job's estimate (``jobs.estimate``), and without one only what has been
charged counts. When the projected total would pass the cap the budget stops: that shard and
every later one is left (not served, not committed; ``ShardStats.left``), the shards in flight
finish and commit, and the manifest says STOPPED_BUDGET with the records served and left. A
rerun with a higher cap resumes from the committed shards.

Until a rate is measured, what is admitted is hedged, since shards in flight cannot be stopped
and an estimate can be wrong (a throughput table row of another machine, a CPU that other work
slows down): beyond the first shard, a shard waits (its thread blocks, the shards in flight go
on) while the projection with the estimate is above ``UNMEASURED_SHARE`` of the cap, or always
when there is no estimate -- until the shards in flight have committed and the rate is
measured, or the time they are charged shows the cap would be passed (then the budget stops).
A wrong estimate then overshoots the cap by at most what the first wave costs beyond its
expected half; a right one costs a short wait for the first commit near the cap.

Each worker process keeps its own budget; on several workers (Dataflow) a process sees the
others' work once it is committed, so the cap can be passed by what the other workers have in
flight (at most a few shards each).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from hyperbatch import storage
from hyperbatch.jobs import estimate, lease, manifest, pricing
from hyperbatch.jobs.layout import JobFolder
from hyperbatch.jobs.manifest import ShardStats
from hyperbatch.jobs.spec import JobSpec
from hyperbatch.runners.engine_adapter import TimeLedger

log = logging.getLogger(__name__)

#: before a rate is measured, shards beyond the first are admitted only while the projection
#: with the estimate stays within this share of the cap (see the module doc)
UNMEASURED_SHARE = 0.5
#: how often a waiting shard looks at the budget again (it is also woken when a shard ends)
POLL_SECONDS = 1.0


class _Ledger(TimeLedger):
    """The time ledger of the shards this budget admitted, readable while they run."""

    def charged(self) -> dict[object, float]:
        with self._lock:
            self._advance()
            return dict(self._shares)


class Prior:
    """Expected cost from the job's estimate: seconds per record and per engine load."""

    def __init__(self, seconds_per_record: float, fixed_seconds: float, basis: str):
        self.seconds_per_record = seconds_per_record
        self.fixed_seconds = fixed_seconds
        self.basis = basis

    @classmethod
    def of(cls, spec: JobSpec) -> Prior | None:
        try:
            est = estimate.estimate(spec)
        except (estimate.EstimateUnavailable, storage.StorageError, OSError, ValueError) as e:
            log.warning(
                "no estimate for the budget of this job (%s): the cap is enforced on the cost "
                "of committed shards once the first have committed",
                e,
            )
            return None
        return cls(est.per_record_seconds(), est.rates.fixed_seconds, est.basis["throughput"])


class JobBudget:
    """The budget of one job in this process (see the module doc)."""

    def __init__(
        self,
        spec: JobSpec,
        job_dir: str,
        attempt: str | None,
        prior: Callable[[], Prior | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        unmeasured_share: float = UNMEASURED_SHARE,
        poll_seconds: float = POLL_SECONDS,
    ):
        assert spec.max_cost_usd is not None
        price = pricing.price_for(spec.accelerator, spec.spot, spec.usd_per_accelerator_hour)
        usd_per_second = pricing.cost_usd(price, 1.0, spec.accelerator_count)
        self.cap_usd = spec.max_cost_usd
        self.cap_seconds = spec.max_cost_usd / usd_per_second if usd_per_second else float("inf")
        self.job_dir, self.attempt = job_dir, attempt
        self._prior_source = prior or (lambda: Prior.of(spec))
        self._prior: Prior | None = None
        self._prior_read = False
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a shard ended: look again
        self.unmeasured_share = unmeasured_share
        self.poll_seconds = poll_seconds
        self._ledger = _Ledger(clock)
        self._in_flight: dict[str, tuple[int, bool]] = {}  # shard -> (records, loads engine)
        self._first_wave: set[str] | None = set()  # admitted before the first shard ended
        self._wave_open = True
        self._started_any = False
        self._markers: dict[str, ShardStats] = {}
        self.stopped = False
        self.last_projection_seconds = 0.0

    # -- what has been spent ---------------------------------------------------------------

    def _committed(self) -> list[ShardStats]:
        """Every committed shard of the job (markers read once each)."""
        prefix = JobFolder(self.job_dir).commits_prefix
        for f in storage.list_prefix(prefix):
            name = f.path[len(prefix) :]
            if "/" in name or not name.endswith(".json") or name[:-5] in self._markers:
                continue
            try:
                marker = json.loads(storage.read_bytes(f.path))
            except (storage.StorageError, ValueError):
                continue  # being written: counted next time
            self._markers[name[:-5]] = ShardStats.from_dict(marker["stats"])
        return list(self._markers.values())

    def _measured(self, committed: list[ShardStats]) -> float | None:
        """Accelerator seconds per record measured on the committed shards, if they tell."""
        if self._first_wave is not None:  # shards that shared the engine's load are in flight
            return None
        records = sum(s.counters.records for s in committed)
        spent = sum(
            s.counters.accelerator_seconds - s.counters.load_seconds - s.counters.warmup_seconds
            for s in committed
        )
        return spent / records if records and spent > 0 else None

    # -- admission ---------------------------------------------------------------------------

    def admit(self, shard: str, records: int) -> bool:
        """May this process start serving ``shard``? False: the budget stopped (for good).
        Before a rate is measured it may wait (see the module doc)."""
        with self._changed:
            while True:
                verdict = self._decide(shard, records)
                if verdict is not None:
                    return verdict
                self._changed.wait(self.poll_seconds)

    def _decide(self, shard: str, records: int) -> bool | None:
        """Admit (True), stop (False) or wait (None); the caller holds the lock."""
        if self.stopped:
            return False
        if not self._prior_read:
            self._prior, self._prior_read = self._prior_source(), True
        committed = self._committed()
        spent, _ = manifest.charged_seconds(committed, lease.attempts(self.job_dir),
                                            self.attempt)  # fmt: skip
        measured = self._measured(committed)
        rate = measured if measured is not None else (
            self._prior.seconds_per_record if self._prior else None
        )  # fmt: skip
        fixed = self._prior.fixed_seconds if self._prior else 0.0
        charged = self._ledger.charged()
        flying = 0.0
        for name, (n, loads) in self._in_flight.items():
            expected = rate * n + (fixed if loads else 0.0) if rate is not None else 0.0
            flying += max(charged.get(name, 0.0), expected)
        new = 0.0
        if rate is not None:
            new = rate * records + (0.0 if self._started_any else fixed)
        projected = spent + flying + new
        self.last_projection_seconds = projected
        if projected > self.cap_seconds:
            self.stopped = True
            self._changed.notify_all()
            log.warning(
                "budget: stopping before shard %s: projected %.1f accelerator-s "
                "(committed %.1f + in flight %.1f + this shard %.1f) > the cap's %.1f "
                "(max_cost_usd %s)",
                shard, projected, spent, flying, new, self.cap_seconds, self.cap_usd,
            )  # fmt: skip
            return False
        if (
            measured is None
            and self._in_flight
            and (rate is None or projected > self.cap_seconds * self.unmeasured_share)
        ):
            return None  # wait for the shards in flight to measure the rate
        self._in_flight[shard] = (records, not self._started_any)
        self._started_any = True
        if self._first_wave is not None and self._wave_open:
            self._first_wave.add(shard)
        self._ledger.start(shard)
        return True

    def release(self, shard: str) -> None:
        """``shard`` is done (committed, or failed): it is no longer in flight."""
        with self._changed:
            self._changed.notify_all()  # shards waiting for a measured rate look again
            self._ledger.discard(shard)
            self._in_flight.pop(shard, None)
            self._wave_open = False  # the engine has loaded: later shards do not share it
            if self._first_wave is not None:
                self._first_wave.discard(shard)
                if not self._first_wave:
                    self._first_wave = None  # no shard in flight shares the load any more


_BUDGETS: dict[tuple[str, str | None], JobBudget] = {}
_BUDGETS_LOCK = threading.Lock()


def for_job(spec: JobSpec, job_dir: str, attempt: str | None) -> JobBudget | None:
    """This process's budget of a job (one per job and attempt), None without a cap."""
    if spec.max_cost_usd is None:
        return None
    key = (job_dir, attempt)
    with _BUDGETS_LOCK:
        budget = _BUDGETS.get(key)
        if budget is None or budget.cap_usd != spec.max_cost_usd:
            budget = _BUDGETS[key] = JobBudget(spec, job_dir, attempt)
        return budget


def left(shard_name: str, records: int) -> ShardStats:
    """The statistics of a shard the budget left unserved."""
    return ShardStats(shard=shard_name, left=records)


def summary(m: dict[str, Any]) -> str:
    """One line on what a budget stop served and left (for logs)."""
    return (
        f"budget stop: {m['records_in']} records served, {m.get('records_left', 0)} left, "
        f"${m['cost_usd']:.6f} of max_cost_usd ${m.get('max_cost_usd')}"
    )
