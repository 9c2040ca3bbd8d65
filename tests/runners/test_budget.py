"""The running job's budget: the projection arithmetic by hand (a clock we move), then a real
pipeline that stops at its cap, reports what it served and left, and resumes with a higher one."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from hyperbatch import storage
from hyperbatch.jobs import spec as job_spec
from hyperbatch.jobs.events import CollectedEvents
from hyperbatch.jobs.layout import JobFolder
from hyperbatch.jobs.lifecycle import resume, set_budget
from hyperbatch.jobs.manifest import ShardStats
from hyperbatch.jobs.status import JobState
from hyperbatch.jobs.store import JobStore
from hyperbatch.runners import budget
from hyperbatch.runners.job_process import run_recorded
from hyperbatch.schemas.records import Counters
from tests.records import jsonl, openai_chat, read_jsonl
from tests.runners import slow_engine  # noqa: F401 - registers engine "slow"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def spec_for(tmp_path, **fields):
    data = {"name": "capped", "task": "chat", "input": str(tmp_path / "in.jsonl"),
            "input_format": "openai", "output": str(tmp_path / "out"), "model": "fake",
            "engine": "fake", "usd_per_accelerator_hour": 3600.0,  # $1 per accelerator-second
            **fields}  # fmt: skip
    return job_spec.validate(data, check_resources=False)


def commit_marker(job_dir: str, shard: str, records: int, seconds: float, load: float = 0.0):
    stats = ShardStats(shard, Counters(records=records, results=records,
                                       accelerator_seconds=seconds, load_seconds=load))  # fmt: skip
    storage.write_bytes(JobFolder(job_dir).shard(shard, ".jsonl").marker,
                        json.dumps({"stats": stats.to_dict()}).encode())  # fmt: skip


def test_projection_by_hand(tmp_path):
    spec = spec_for(tmp_path, max_cost_usd=10.0)  # 10 accelerator-seconds
    job_dir = spec.job_dir()
    clock = Clock()
    cap = budget.JobBudget(spec, job_dir, "a-1", prior=lambda: budget.Prior(1.0, 2.0, "by hand"),
                           clock=clock, unmeasured_share=1.0)  # no hedge (tested below)  # fmt: skip
    # nothing spent: 3 records x 1 s + the engine load (2 s) = 5 <= 10
    assert cap.admit("s1", 3)
    assert cap.last_projection_seconds == pytest.approx(5.0)
    # s1 in flight is expected to cost 5; s2 costs 3 more: 8 <= 10
    assert cap.admit("s2", 3)
    assert cap.last_projection_seconds == pytest.approx(8.0)
    # 5 + 3 + 3 = 11 > 10: stop, and stay stopped even for a small shard
    assert not cap.admit("s3", 3)
    assert cap.last_projection_seconds == pytest.approx(11.0)
    assert cap.stopped
    assert not cap.admit("s4", 1)


def test_charged_time_beyond_the_expected_counts(tmp_path):
    spec = spec_for(tmp_path, max_cost_usd=10.0)
    clock = Clock()
    cap = budget.JobBudget(spec, spec.job_dir(), "a-1",
                           prior=lambda: budget.Prior(0.5, 0.0, "by hand"), clock=clock,
                           unmeasured_share=1.0)  # fmt: skip
    assert cap.admit("s1", 2)  # expected 1 s
    clock.now = 7.0  # ... but it has been charged 7 s so far (a slow engine): 7 + 2 * 0.5 = 8
    assert cap.admit("s2", 2)
    assert cap.last_projection_seconds == pytest.approx(8.0)
    clock.now = 10.0  # 3 more seconds shared by s1 and s2: 8.5 + 1.5 + 1 (s3) = 11 > 10
    assert not cap.admit("s3", 2)
    assert cap.last_projection_seconds == pytest.approx(11.0)


def test_committed_shards_and_the_measured_rate(tmp_path):
    spec = spec_for(tmp_path, max_cost_usd=20.0)
    job_dir = spec.job_dir()
    # an earlier attempt committed a shard: 4 records charged 10 s, 6 of them loading the engine
    commit_marker(job_dir, "part-00000-00000", 4, 10.0, load=6.0)
    clock = Clock()
    cap = budget.JobBudget(spec, job_dir, "a-2",
                           prior=lambda: budget.Prior(3.0, 0.0, "by hand"), clock=clock)  # fmt: skip
    # the first wave of this process has not ended: the prior's 3 s/record, 10 + 2 * 3 = 16
    assert cap.admit("part-00000-00001", 2)
    assert cap.last_projection_seconds == pytest.approx(16.0)
    clock.now = 2.0
    commit_marker(job_dir, "part-00000-00001", 2, 2.0)
    cap.release("part-00000-00001")
    # now measured on the committed shards: (10 - 6 + 2) / 6 records = 1 s/record
    assert cap.admit("part-00000-00002", 4)
    assert cap.last_projection_seconds == pytest.approx(12.0 + 4.0)
    assert not cap.admit("part-00000-00003", 5)  # 12 + 4 (in flight) + 5 > 20
    assert cap.last_projection_seconds == pytest.approx(21.0)


def admit_in_a_thread(cap: budget.JobBudget, shard: str, records: int) -> tuple[Any, dict]:
    got: dict[str, bool] = {}
    thread = threading.Thread(target=lambda: got.update(ok=cap.admit(shard, records)))
    thread.start()
    return thread, got


def test_before_a_rate_is_measured_shards_beyond_half_the_cap_wait(tmp_path):
    spec = spec_for(tmp_path, max_cost_usd=10.0)
    job_dir = spec.job_dir()
    clock = Clock()
    cap = budget.JobBudget(spec, job_dir, "a-1", prior=lambda: budget.Prior(1.0, 0.0, "by hand"),
                           clock=clock, poll_seconds=0.02)  # fmt: skip
    assert cap.admit("part-00000-00000", 3)  # 3 <= 10 / 2
    # 3 + 3 > 5: the estimate is not trusted that far; it waits for a measured rate
    thread, got = admit_in_a_thread(cap, "part-00000-00001", 3)
    thread.join(0.3)
    assert thread.is_alive()
    clock.now = 3.0
    commit_marker(job_dir, "part-00000-00000", 3, 3.0)
    cap.release("part-00000-00000")  # measured: 1 s a record; 3 spent + 3 <= 10
    thread.join(5)
    assert got == {"ok": True}
    assert cap.admit("part-00000-00002", 3)  # measured now: no wait, 3 + 3 + 3 <= 10
    assert not cap.admit("part-00000-00003", 3)  # 12 > 10


def test_without_an_estimate_one_shard_measures_and_the_time_charged_stops(tmp_path):
    spec = spec_for(tmp_path, max_cost_usd=10.0)
    clock = Clock()
    cap = budget.JobBudget(spec, spec.job_dir(), "a-1", prior=lambda: None, clock=clock,
                           poll_seconds=0.02)  # fmt: skip
    assert cap.admit("s1", 3)  # nothing known, nothing in flight: one shard goes
    thread, got = admit_in_a_thread(cap, "s2", 3)  # waits for s1 to tell the rate
    thread.join(0.3)
    assert thread.is_alive()
    clock.now = 11.0  # s1 has been charged more than the cap: the waiting shard stops it
    thread.join(5)
    assert got == {"ok": False}
    assert cap.stopped


def test_a_capped_job_stops_reports_and_resumes_with_a_higher_cap(tmp_path):
    records = [openai_chat(f"r-{i:02d}", f"question number {i}", max_tokens=3) for i in range(20)]
    (tmp_path / "in.jsonl").write_bytes(jsonl(records))
    # the slow engine takes >= 0.05 s a request: a 2-record shard costs >= $0.10 at $1/s, so
    # the 10 shards cost more than $1; with a $0.25 cap the job stops after a few
    slow = {"engine": "slow", "engine_options": {"seconds_per_request": 0.05},
            "records_per_shard": 2, "batch_size": 2}  # fmt: skip
    spec = spec_for(tmp_path, max_cost_usd=0.25, **slow)
    events = CollectedEvents()
    store = JobStore(spec.output, events)
    store.create(spec, spec.job_id, submitted_by="test", submission={}, runner="local")

    done = run_recorded(store, spec.job_id, by="test", launch={}, heartbeat_s=60)

    m = done.manifest
    assert m["status"] == "STOPPED_BUDGET"
    assert m["max_cost_usd"] == 0.25
    assert m["records_left"] > 0
    assert m["records_in"] > 0
    assert m["records_in"] + m["records_left"] == 20
    assert m["shards_left"] == 10 - len(m["shards"])
    committed = JobFolder(spec.job_dir()).committed_shards()
    assert committed == sorted(s["shard"] for s in m["shards"])
    served = [r["custom_id"] for f in storage.glob(f"{spec.job_dir()}/results/*.jsonl")
              for r in read_jsonl(storage.read_bytes(f.path))]  # fmt: skip
    assert len(served) == m["results"] == m["records_in"]
    # a final state of its own, announced with the manifest's summary and what is left
    record = store.get(spec.job_id)
    assert record.state == JobState.STOPPED_BUDGET
    assert record.state.terminal
    assert [e["state"] for e in events.events] == ["QUEUED", "RUNNING", "STOPPED_BUDGET"]
    last = events.events[-1]
    assert last["manifest_summary"]["records_left"] == m["records_left"]
    assert f"{m['records_left']} left" in last["message"]
    assert "max_cost_usd" in last["message"]

    # the same job (a budget is not part of its id) with a higher cap serves the rest
    set_budget(store, spec.job_id, 1000.0)
    resume(store, spec.job_id)
    done = run_recorded(store, spec.job_id, by="test", launch={}, heartbeat_s=60)

    m2 = done.manifest
    assert m2["status"] == "SUCCEEDED"
    assert store.get(spec.job_id).state == JobState.SUCCEEDED
    assert (m2["records_in"], m2["records_left"], m2["attempts"]) == (20, 0, 2)
    served = sorted(r["custom_id"] for f in storage.glob(f"{spec.job_dir()}/results/*.jsonl")
                    for r in read_jsonl(storage.read_bytes(f.path)))  # fmt: skip
    assert served == [f"r-{i:02d}" for i in range(20)]  # each once: resumed, not redone
    first = {s["shard"]: s["accelerator_seconds"] for s in m["shards"]}
    assert {s["shard"]: s["accelerator_seconds"] for s in m2["shards"] if s["shard"] in first} == (
        first
    )
    assert store.spec(spec.job_id).max_cost_usd == 1000.0


def test_a_job_a_trigger_launches_stops_at_the_trigger_s_default_cap(tmp_path):
    """Through the Pub/Sub trigger's handler: a message whose spec sets no cap gets the
    trigger's default, the job is launched in a process of its own (the local launcher) and
    its pipeline stops at that cap: STOPPED_BUDGET, records served and left."""
    from hyperbatch.jobs.triggers.handler import TriggerHandler
    from hyperbatch.jobs.triggers.messages import Delivery
    from hyperbatch.runners.local import LocalLauncher
    from tests.jobs import control_plane as cp

    records = [openai_chat(f"r-{i:02d}", f"question number {i}", max_tokens=3) for i in range(20)]
    (tmp_path / "in.jsonl").write_bytes(jsonl(records))
    store = JobStore(str(tmp_path / "out"))
    body = {"name": "triggered", "task": "chat", "input": str(tmp_path / "in.jsonl"),
            "input_format": "openai", "output": store.root, "model": "fake", "engine": "slow",
            "engine_options": {"seconds_per_request": 0.05}, "records_per_shard": 2,
            "batch_size": 2, "usd_per_accelerator_hour": 3600.0}  # fmt: skip
    launcher = LocalLauncher(plugins=("tests.runners.slow_engine",), heartbeat_s=0.3)
    handler = TriggerHandler(store, launcher, allow=[str(tmp_path)], default_max_cost_usd=0.25)

    outcome = handler.handle(Delivery("m-1", json.dumps(body).encode(), {}))

    assert (outcome.ack, outcome.kind) == (True, "submitted"), outcome
    assert store.spec(outcome.job_id).max_cost_usd == 0.25
    record = cp.wait_for(lambda: cp.finished(store, outcome.job_id), timeout=120)
    assert record.state == JobState.STOPPED_BUDGET, record.to_dict().get("error")
    m = json.loads(storage.read_bytes(JobFolder(record.status.job_dir).manifest_json))
    assert m["status"] == "STOPPED_BUDGET"
    assert m["max_cost_usd"] == 0.25
    assert m["records_in"] > 0
    assert m["records_left"] > 0
    assert m["records_in"] + m["records_left"] == 20
    assert record.status.manifest is not None
    assert record.status.manifest.records_left == m["records_left"]
    assert "max_cost_usd" in record.to_dict()["error"]
