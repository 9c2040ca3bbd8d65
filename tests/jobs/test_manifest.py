"""The cost manifest's arithmetic, checked by hand, and its Avro twin."""

from __future__ import annotations

import dataclasses

import pytest

from hyperbatch import accelerators
from hyperbatch.jobs import manifest, pricing
from hyperbatch.jobs import spec as job_spec
from hyperbatch.jobs.manifest import ShardStats
from hyperbatch.schemas.records import Counters


def spec(**kw):
    return job_spec.validate({"name": "cost", "task": "chat", "input": "x", "input_format": "jsonl",
                              "output": "/tmp", "model": "m", "engine": "fake", **kw},
                             check_resources=False)  # fmt: skip


SHARDS = [
    ShardStats("part-00000-00001",
               Counters(records=10, results=8, errors=2, prompt_tokens=400, completion_tokens=600,
                        cached_tokens=100, accelerator_seconds=1800.0, busy_seconds=1000.0,
                        prefill_seconds=250.0, computed_token_slots=2000, useful_token_slots=1500,
                        compilations=3),
               errors_by_code={"invalid_json": 2}),
    ShardStats("part-00000-00000",
               Counters(records=5, results=5, errors=0, prompt_tokens=100, completion_tokens=900,
                        accelerator_seconds=1800.0, busy_seconds=1000.0, prefill_seconds=250.0,
                        computed_token_slots=1000, useful_token_slots=500)),
]  # fmt: skip


def test_costs_and_counts_by_hand():
    m = manifest.build(job_id="cost-1", spec=spec(accelerator="tpu-v6e", accelerator_count=4),
                       shards=SHARDS, wall_seconds=3000.0, results_glob="r", errors_glob="e")  # fmt: skip
    usd_h = accelerators.ACCELERATORS["tpu-v6e"].on_demand_usd_per_hour
    cost = usd_h * 4 * 3600 / 3600  # 1 hour of accelerator time on 4 chips
    assert m["cost_usd"] == pytest.approx(cost)
    assert (m["records_in"], m["results"], m["errors"]) == (15, 13, 2)
    assert m["errors_by_code"] == {"invalid_json": 2}
    assert (m["prompt_tokens"], m["completion_tokens"], m["cached_tokens"]) == (500, 1500, 100)
    # prefill took 500 of 2000 busy seconds: input tokens carry a quarter of the cost
    assert m["cost_split"] == "measured_prefill_time"
    assert m["usd_per_1k_input_tokens"] == pytest.approx(cost * 0.25 / 500 * 1000)
    assert m["usd_per_1k_output_tokens"] == pytest.approx(cost * 0.75 / 1500 * 1000)
    assert m["usd_per_1k_tokens"] == pytest.approx(cost / 2000 * 1000)
    assert m["output_tokens_per_second"] == pytest.approx(1500 / 3000)
    assert m["padding_waste_percent"] == pytest.approx(100 * (1 - 2000 / 3000), abs=1e-3)
    assert m["engine_compilations"] == 3
    assert [s["shard"] for s in m["shards"]] == ["part-00000-00000", "part-00000-00001"]
    assert sum(s["cost_usd"] for s in m["shards"]) == pytest.approx(cost)
    assert m["status"] == "SUCCEEDED"
    assert (m["price_table_date"], m["pricing_model"]) == (pricing.PRICE_TABLE_DATE, "on_demand")


def test_spot_override_token_share_and_failure_threshold():
    shards = [ShardStats("p", Counters(records=4, results=1, errors=3, prompt_tokens=300,
                                       completion_tokens=100, accelerator_seconds=7200.0))]  # fmt: skip
    m = manifest.build(job_id="j", spec=spec(usd_per_accelerator_hour=2.0, max_error_rate=0.5),
                       shards=shards, wall_seconds=10, results_glob="r", errors_glob="e")  # fmt: skip
    assert (m["cost_usd"], m["pricing_model"]) == (4.0, "override")
    assert m["cost_split"] == "token_share"  # no measured prefill time
    assert m["usd_per_1k_input_tokens"] == m["usd_per_1k_output_tokens"] == pytest.approx(10.0)
    assert m["status"] == "FAILED"  # 3 of 4 records failed, more than 0.5
    spot = manifest.build(job_id="j", spec=spec(spot=True), shards=shards, wall_seconds=10,
                          results_glob="r", errors_glob="e")  # fmt: skip
    assert spot["usd_per_accelerator_hour"] == accelerators.ACCELERATORS["cpu"].spot_usd_per_hour


def test_json_and_avro_twins_agree(tmp_path):
    m = manifest.build(job_id="j", spec=spec(), shards=SHARDS, wall_seconds=5,
                       results_glob="r", errors_glob="e")  # fmt: skip
    manifest.write(str(tmp_path), m)
    assert manifest.read(str(tmp_path)) == m
    assert manifest.read(str(tmp_path / "manifest.avro")) == m


def test_a_job_with_no_result_never_succeeds_and_half_is_the_default_limit():
    all_failed = [ShardStats("p", Counters(records=3, results=0, errors=3))]
    m = manifest.build(job_id="j", spec=spec(max_error_rate=1.0), shards=all_failed,
                       wall_seconds=1, results_glob="r", errors_glob="e")  # fmt: skip
    assert m["status"] == "FAILED"  # even though max_error_rate allows every error
    assert spec().max_error_rate == 0.5
    half = [ShardStats("p", Counters(records=4, results=2, errors=2))]
    assert manifest.build(job_id="j", spec=spec(), shards=half, wall_seconds=1,
                          results_glob="r", errors_glob="e")["status"] == "SUCCEEDED"  # fmt: skip
    most = [ShardStats("p", Counters(records=4, results=1, errors=3))]
    assert manifest.build(job_id="j", spec=spec(), shards=most, wall_seconds=1,
                          results_glob="r", errors_glob="e")["status"] == "FAILED"  # fmt: skip
    empty = manifest.build(job_id="j", spec=spec(), shards=[], wall_seconds=1,
                           results_glob="r", errors_glob="e")  # fmt: skip
    assert empty["status"] == "SUCCEEDED"
    assert empty["records_in"] == 0


def test_throughput_over_two_attempts_divides_by_the_wall_of_both():
    """A job killed once and resumed (issue 12, item 7): tok/s are the work of the committed
    shards over the wall time of every attempt, not over the last attempt's alone (which
    reported 211 tok/s for a 0.6 s rerun of a 22 s job)."""
    from hyperbatch.jobs.lease import Attempt

    killed = Attempt("a1", "vm:1:a1", started_unix=0.0, seen_unix=1000.0)  # died mid-job
    resumed = Attempt("a2", "vm:2:a2", started_unix=2000.0, seen_unix=2000.0)
    first, second = SHARDS[1], SHARDS[0]  # 900 and 600 output tokens
    shards = [
        dataclasses.replace(first, attempt="a1", resumed=True,
                            counters=dataclasses.replace(first.counters, accelerator_seconds=600.0)),
        dataclasses.replace(second, attempt="a2"),
    ]  # fmt: skip
    m = manifest.build(job_id="cost-1", spec=spec(accelerator="tpu-v6e", accelerator_count=4),
                       shards=shards, wall_seconds=3000.0, results_glob="r", errors_glob="e",
                       attempts=[killed, resumed], attempt="a2")  # fmt: skip
    assert (m["attempts"], m["wall_seconds"], m["total_wall_seconds"]) == (2, 3000.0, 4000.0)
    assert m["completion_tokens"] == 1500
    assert m["output_tokens_per_second"] == pytest.approx(1500 / 4000)  # not 1500 / 3000
    assert m["total_tokens_per_second"] == pytest.approx((500 + 1500) / 4000)
    # the killed attempt's 1000 s, less the 600 s its committed shard was charged, were lost
    assert m["accelerator_seconds_lost"] == pytest.approx(400.0)
    assert m["accelerator_seconds"] == pytest.approx(600.0 + 1800.0 + 400.0)
