"""One runner per job: the lease on a job folder, locally and on Cloud Storage (fake-gcs-server),
with a live holder, a killed holder and two real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from hyperbatch import storage
from hyperbatch.jobs import lease
from hyperbatch.jobs.lease import Lease, LeaseHeld
from tests.jobs import control_plane as cp


@pytest.fixture(params=["local", "gcs"])
def job_dir(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "job")
    return request.getfixturevalue("gcs_bucket") + "/jobs/job"


def test_a_live_holder_keeps_the_job_and_release_frees_it(job_dir):
    first = Lease(job_dir, ttl_s=30)
    first.acquire()
    with pytest.raises(LeaseHeld, match=f"being run by {first.owner}"):
        Lease(job_dir, ttl_s=30).acquire()
    first.release("succeeded")
    assert not storage.exists(storage.join(job_dir, "_lease.json"))
    second = Lease(job_dir, ttl_s=30)
    second.acquire()
    second.release("succeeded")
    runs = lease.attempts(job_dir)
    assert [a.attempt for a in runs] == [first.attempt, second.attempt]
    assert [a.outcome for a in runs] == ["succeeded", "succeeded"]


def test_an_expired_lease_is_taken_over(job_dir):
    dead = Lease(job_dir, ttl_s=0.3)
    dead.acquire()
    dead._stop.set()  # its heartbeat stops, as if the holder hung or lost the network
    dead._thread.join()
    cp.wait_for(lambda: _expired(job_dir), timeout=10)
    taker = Lease(job_dir, ttl_s=30)
    taker.acquire()
    doc = json.loads(storage.read_bytes(storage.join(job_dir, "_lease.json")))
    assert doc["owner"] == taker.owner
    taker.release("succeeded")
    dead.release("failed")  # too late: it is not its lease any more, nothing is deleted
    assert {a.attempt: a.outcome for a in lease.attempts(job_dir)} == {
        dead.attempt: "failed",
        taker.attempt: "succeeded",
    }


def _expired(job_dir: str) -> bool:
    import time

    doc = json.loads(storage.read_bytes(storage.join(job_dir, "_lease.json")))
    return time.time() > doc["expires_at_unix"]


HOLD = textwrap.dedent("""
    import sys, time
    from hyperbatch.jobs.lease import Lease
    lease = Lease(sys.argv[1], ttl_s=600)
    lease.acquire()
    print(lease.owner, flush=True)
    time.sleep(600)
""")


def test_a_killed_holder_is_taken_over_at_once(job_dir):
    """kill -9 of the holder: its lease would last 10 minutes, but its process is gone."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, job_dir], stdout=subprocess.PIPE,
                              text=True, env={**os.environ})  # fmt: skip
    owner = holder.stdout.readline().strip()
    assert owner.endswith(tuple("0123456789abcdef"))
    with pytest.raises(LeaseHeld, match=owner):
        Lease(job_dir).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    taker = Lease(job_dir)
    taker.acquire()
    taker.release("succeeded")
    killed = next(a for a in lease.attempts(job_dir) if a.owner == owner)
    assert killed.outcome is None  # it never said how it ended
    assert killed.finished_unix is None
