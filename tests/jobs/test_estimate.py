"""Estimates: the scheduler simulation and the length model by hand, the input read whole or
sampled, the throughput table, an estimate calibrated on an earlier job (the fake engine, whose
answers are known), the budget gate, and -- on the real SmolLM2 -- the accuracy the README
states: accelerator seconds and $ within 25% of the manifest after one calibration job."""

from __future__ import annotations

import json
import random
import resource
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from hyperbatch.cli import EXIT_OK, main
from hyperbatch.jobs import estimate, throughput
from hyperbatch.jobs import spec as job_spec
from hyperbatch.jobs.manifest import Lengths
from hyperbatch.schemas.formats import Location, Parsed
from hyperbatch.schemas.records import FinishReason, Request, Result, SamplingParams, Usage
from tests.records import jsonl, openai_chat


def test_decode_calls_by_hand():
    # two slots, 8 tokens a call: a 9-token answer needs 1 call (its first token is prefill's)
    # (calls, admission rounds, slots computed: every call computes the whole batch)
    assert estimate.decode_calls([9, 9, 9, 9], slots=2, steps=8, refill_min=1) == (2, 2, 4)
    # 17 tokens: 2 calls; 1 token: done at prefill; the 9 joins at once (1 free >= min(2, 1))
    assert estimate.decode_calls([17, 1, 9], slots=2, steps=8, refill_min=2) == (2, 2, 4)
    # refill only once 2 slots are free: the third waits for both, 2 + 1 calls
    assert estimate.decode_calls([17, 9, 9, 2], slots=2, steps=8, refill_min=2) == (3, 2, 6)
    # continuous batching (1 token a step, refill at once): 5 + 3 steps on one slot
    assert estimate.decode_calls([6, 4], slots=1, steps=1, refill_min=1) == (8, 2, 8)
    # a tail batch of 1: four slots busy for 2 calls, then the 5-token answer alone for 2
    # calls, each computing 1 slot instead of 4
    assert estimate.decode_calls([5, 3, 3, 3], slots=4, steps=1, refill_min=1) == (4, 1, 16)
    tail = estimate.decode_calls([5, 3, 3, 3], slots=4, steps=1, refill_min=1, tail=1)
    assert tail == (4, 1, 4 * 2 + 1 * 2)
    # across an admission: the 9 waits 2 calls for the 3's slot, then shares 2 full calls with
    # the 5 and finishes alone (6 tail calls)
    waits = estimate.decode_calls([5, 3, 9], slots=2, steps=1, refill_min=2, tail=1)
    assert waits == (10, 2, 2 * 2 + 2 * 2 + 1 * 6)


def test_prefill_is_counted_in_the_slots_the_engine_computes():
    packed = estimate.Scheduling(True, 2, 8, 1, 8, 512, 1, prefill_tokens=256, packed=True)
    assert estimate.prefill_slots([100, 100, 100], packed) == 512  # 300 tokens: two calls
    assert estimate.prefill_slots([0, 0], packed) == 0
    bucketed = estimate.Scheduling(True, 2, 8, 1, 8, 512, 1, prefill_tokens=256, packed=False,
                                   buckets=(16, 64, 256, 1024))  # fmt: skip
    # 10 -> one call of 16 rows x 16; two 50s -> one call of 4 rows x 64; 300 -> 1 row x 1024
    assert estimate.prefill_slots([10, 50, 50, 300], bucketed) == 256 + 256 + 1024
    # two slots, admitted two at a time; packed, a round's part-full last call goes on in the
    # next round: 4 x 150 tokens take 3 calls (not 2 per pair of 300)
    assert estimate.work_units([9, 9, 9, 9], [150] * 4, packed) == (2 * 2 * 8, 3 * 256)
    continuous = estimate.Scheduling(False, 2, 1, 1, 8, 512, 16)
    assert estimate.work_units([9, 9], [100, 30], continuous) == (18, 130)  # no padding


def served(max_tokens: int, n: int, reason: FinishReason) -> tuple[Parsed, Result]:
    request = Request("r", SamplingParams(max_tokens=max_tokens), prompt="p")
    result = Result("r", text="x", finish_reason=reason, usage=Usage(completion_tokens=n))
    return Parsed(request, Location("f", 1)), result


def test_lengths_are_grouped_by_limit_and_round_trip():
    lengths = Lengths.of([
        served(24, 8, FinishReason.STOP), served(24, 8, FinishReason.STOP),
        served(24, 24, FinishReason.LENGTH), served(100, 70, FinishReason.STOP),
    ])  # fmt: skip
    # 100 and 70 are bucketed 8 per octave: 96 and 64
    assert lengths.to_dict() == {"24": {"8": 2, "cut": 1}, "96": {"64": 1}}
    assert Lengths.from_dict(lengths.to_dict()) == lengths
    twice = lengths + lengths
    assert twice.to_dict() == {"24": {"8": 4, "cut": 2}, "96": {"64": 2}}


def test_length_model_draws_from_the_nearest_limit():
    model = estimate.LengthModel(Lengths(stop={24: {8: 3}, 96: {20: 1}}, cut={24: 1, 96: 3}))
    draws = [model.draw(20) for _ in range(8)]  # the 24 group: 3 stopped at 8, 1 cut at 24
    assert sorted(draws) == [(8, 8, 8)] * 6 + [(20, 20, 20)] * 2  # cut at 24 >= 20: 20
    draws = [model.draw(128) for _ in range(4)]  # the 96 group: one stopped at 20, 3 cut at 96
    assert (20, 20, 20) in draws
    # cut at 96, limit 128: at least 96, at most 128; no earlier answer ran past 96 and stopped
    assert draws.count((96, 128, 128)) == 3


def test_the_input_is_read_whole_or_sampled(tmp_path, monkeypatch):
    rng = random.Random(1)
    lines = [openai_chat(f"id-{i}", "word " * rng.randrange(1, 40)) for i in range(3000)]
    (tmp_path / "in.jsonl").write_bytes(jsonl(lines))
    spec = job_spec.validate({"name": "sample", "task": "chat", "input_format": "openai",
                              "input": str(tmp_path / "in.jsonl"), "output": str(tmp_path),
                              "model": "fake", "engine": "fake"}, check_resources=False)  # fmt: skip

    whole = estimate.read_input(spec, sample_records=500)
    assert (whole.records, whole.exact, len(whole.sample)) == (3000, True, 500)
    ids = [json.loads(raw)["custom_id"] for _, raw in whole.sample]
    assert len(set(ids)) == 500  # a sample without repeats, from the whole file:
    assert max(int(i[3:]) for i in ids) > 2500
    assert min(int(i[3:]) for i in ids) < 500
    assert all(loc.line == int(json.loads(raw)["custom_id"][3:]) + 1 for loc, raw in whole.sample)

    monkeypatch.setattr(estimate, "FULL_READ_BYTES", 1024)  # "large": sampled by byte offsets
    sampled = estimate.read_input(spec, sample_records=500)
    assert not sampled.exact
    assert len(sampled.sample) == 500
    assert abs(sampled.records - 3000) / 3000 < 0.1


def test_reading_a_large_input_keeps_only_the_sample_in_memory(tmp_path, monkeypatch):
    """Both ways of reading (streamed whole with a reservoir, and sampled at byte offsets)
    hold the sample, never the input: peak memory stays far below the file's size."""
    import tracemalloc

    lines = [openai_chat(f"id-{i}", "word " * (40 + i % 20)) for i in range(20_000)]
    (tmp_path / "big.jsonl").write_bytes(jsonl(lines))
    size = (tmp_path / "big.jsonl").stat().st_size  # ~7 MB
    spec = job_spec.validate({"name": "big", "task": "chat", "input_format": "openai",
                              "input": str(tmp_path / "big.jsonl"), "output": str(tmp_path),
                              "model": "fake", "engine": "fake"}, check_resources=False)  # fmt: skip
    for full_read in (size + 1, 1024):  # read whole (streamed), then sampled by offsets
        monkeypatch.setattr(estimate, "FULL_READ_BYTES", full_read)
        tracemalloc.start()
        try:
            got = estimate.read_input(spec, sample_records=100)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(got.sample) == 100
        assert abs(got.records - 20_000) / 20_000 < 0.1
        assert peak < size / 8, (full_read, peak, size)


def test_a_large_input_on_cloud_storage_is_sampled_at_offsets(gcs_bucket, tmp_path, monkeypatch):
    from hyperbatch import storage

    lines = [openai_chat(f"id-{i}", "word " * (1 + i % 30)) for i in range(2000)]
    storage.write_bytes(f"{gcs_bucket}/in/a.jsonl", jsonl(lines[:1200]))
    storage.write_bytes(f"{gcs_bucket}/in/b.jsonl", jsonl(lines[1200:]))
    spec = job_spec.validate({"name": "gcs", "task": "chat", "input_format": "openai",
                              "input": f"{gcs_bucket}/in/*.jsonl", "output": str(tmp_path),
                              "model": "fake", "engine": "fake"}, check_resources=False)  # fmt: skip
    monkeypatch.setattr(estimate, "FULL_READ_BYTES", 1024)
    got = estimate.read_input(spec, sample_records=200)
    assert (got.files, got.exact, len(got.sample)) == (2, False, 200)
    assert abs(got.records - 2000) / 2000 < 0.15
    ids = {json.loads(raw)["custom_id"] for _, raw in got.sample}
    assert any(int(i[3:]) < 1200 for i in ids)
    assert any(int(i[3:]) >= 1200 for i in ids)  # both files


def test_throughput_table_cites_its_sources_and_scales():
    for row in throughput.TABLE:
        assert row.source, row
        assert row.measured, row
        assert row.decode_tokens_per_s > 0
        assert row.prefill_tokens_per_s > 0
    row = next(r for r in throughput.TABLE if (r.engine, r.accelerator) == ("jax", "cpu"))
    same = throughput.lookup("jax", "cpu", row.params, 1, 64)
    assert same.decode_tokens_per_s == row.decode_tokens_per_s  # a CPU: any batch, same rate
    assert "ours" in same.basis
    tenfold = throughput.lookup("jax", "cpu", row.params * 10, 1, 64)
    assert tenfold.decode_tokens_per_s == pytest.approx(row.decode_tokens_per_s / 10)
    assert tenfold.fixed_seconds == pytest.approx(row.fixed_seconds * 10)
    assert "scaled by parameters" in tenfold.basis
    with pytest.raises(throughput.NoThroughput, match="run one small job"):
        throughput.lookup("vllm", "tpu-v6e", row.params, 1, 64)


def fake_job(tmp_path, name: str, records: list, **extra) -> str:
    """A spec file of the fake engine (answers: the prompt's words reversed, cut at max_tokens)
    whose output -- and job store -- is ``tmp_path/out``."""
    (tmp_path / f"{name}.jsonl").write_bytes(jsonl(records))
    spec = {"name": name, "task": "chat", "input": f"{name}.jsonl", "input_format": "openai",
            "output": "out", "model": "fake", "engine": "fake", "records_per_shard": 4, **extra}  # fmt: skip
    (tmp_path / f"{name}.json").write_text(json.dumps(spec))
    return str(tmp_path / f"{name}.json")


def shaped(prefix: str, n: int) -> list:
    """Half short questions that stop (2 words, max_tokens 8), half long ones cut at 3."""
    return [
        openai_chat(f"{prefix}-{i}", "tell me" if i % 2 else "one two three four five six",
                    max_tokens=8 if i % 2 else 3)
        for i in range(n)
    ]  # fmt: skip


def test_an_estimate_calibrated_on_an_earlier_job(tmp_path):
    with pytest.raises(estimate.EstimateUnavailable, match="no earlier job"):
        estimate.estimate(job_spec.load(fake_job(tmp_path, "first", shaped("a", 12))))
    ran = CliRunner().invoke(main, ["run", fake_job(tmp_path, "first", shaped("a", 12)),
                                    "--quiet", "--format", "json"])  # fmt: skip
    assert ran.exit_code == EXIT_OK, ran.output
    first = json.loads(ran.stdout)
    assert first["completion_lengths"] == {"3": {"cut": 6}, "8": {"2": 6}}

    spec = job_spec.load(fake_job(tmp_path, "second", shaped("b", 20)))
    est = estimate.estimate(spec)

    assert first["job_id"] in est.basis["throughput"]
    assert "measured" in est.basis["throughput"]
    assert first["job_id"] in est.basis["completion_lengths"]
    assert (est.records, est.records_exact, est.invalid_records) == (20, True, 0)
    ran = CliRunner().invoke(main, ["run", fake_job(tmp_path, "second", shaped("b", 20)),
                                    "--quiet", "--format", "json"])  # fmt: skip
    second = json.loads(ran.stdout)
    assert est.prompt_tokens == second["prompt_tokens"]  # the engine's own count (words)
    # 10 answers of 2 words (they stop) + 10 cut at 3 words, exactly as the first job's
    assert est.completion_tokens.expected == second["completion_tokens"] == 50
    c = est.cost_usd
    assert 0 < c.low <= c.expected <= c.high
    assert est.accelerator_seconds.expected == pytest.approx(
        c.expected / (est.price.usd_per_accelerator_hour / 3600)
    )


def test_an_embedding_job_is_estimated_from_an_earlier_one(tmp_path):
    def texts(prefix: str, n: int) -> list:
        return [{"id": f"{prefix}-{i}", "text": "some words to embed " * (1 + i % 3)}
                for i in range(n)]  # fmt: skip

    def job(name: str, n: int) -> str:
        (tmp_path / f"{name}.jsonl").write_bytes(jsonl(texts(name, n)))
        spec = {"name": name, "task": "embedding", "input": f"{name}.jsonl", "input_format":
                "jsonl", "output": "out", "model": "fake", "engine": "fake",
                "records_per_shard": 4}  # fmt: skip
        (tmp_path / f"{name}.json").write_text(json.dumps(spec))
        return str(tmp_path / f"{name}.json")

    with pytest.raises(estimate.EstimateUnavailable, match="no rows for embedding jobs"):
        estimate.estimate(job_spec.load(job("first", 6)))
    ran = CliRunner().invoke(main, ["run", job("first", 6), "--quiet", "--format", "json"])
    assert ran.exit_code == EXIT_OK, ran.output
    est = estimate.estimate(job_spec.load(job("second", 9)), workers=4)
    m = json.loads(CliRunner().invoke(main, ["run", job("second", 9), "--quiet",
                                             "--format", "json"]).stdout)  # fmt: skip
    assert (est.records, est.prompt_tokens) == (m["records_in"], m["prompt_tokens"])
    assert est.completion_tokens.expected == 0
    assert "embedding job" in est.basis["completion_lengths"]
    assert est.workers == 3  # 9 records, 4 a shard: a fourth worker would get no shard
    assert "of 4 asked for" in est.basis["workers"]


def test_the_budget_gate_refuses_below_the_low_estimate(tmp_path):
    ran = CliRunner().invoke(main, ["run", fake_job(tmp_path, "calib", shaped("a", 8)), "--quiet"])
    assert ran.exit_code == EXIT_OK, ran.output
    capped = fake_job(tmp_path, "capped", shaped("b", 8))
    spec = job_spec.load(capped, data={"max_cost_usd": 1e-12})
    with pytest.raises(estimate.BudgetExceeded) as refused:
        estimate.check_budget(spec)
    message = str(refused.value)
    assert "max_cost_usd" in message
    assert "below even the low estimate" in message
    assert "8 records" in message
    assert "raise max_cost_usd" in message.lower()
    est = refused.value.estimate
    assert est.cost_usd.low > 1e-12
    assert est.within_budget is False
    roomy = job_spec.load(capped, data={"max_cost_usd": 100.0})
    assert estimate.check_budget(roomy).within_budget is True
    assert estimate.check_budget(job_spec.load(fake_job(tmp_path, "free", shaped("c", 2)))) is None


# ------------------------------------------------------------------------------ SmolLM2


QUESTIONS = [
    "What is the capital of {}?", "Name a famous dish from {}.", "What language is spoken in {}?",
    "Describe the flag of {} in one sentence.",
]  # fmt: skip
PLACES = ["France", "Japan", "Germany", "Brazil", "Canada", "Egypt", "India", "Kenya", "Peru",
          "Spain", "Norway", "Chile", "Italy", "Mexico", "Ghana", "Nepal"]  # fmt: skip


def run_in_a_process(spec_file: str) -> dict:
    """`hyperbatch run` in a process of its own, as a job runs (its engine loads cold); the
    manifest gets ``cpu_share``: the CPU time the process got over its wall time."""

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    t0, cpu0 = time.monotonic(), cpu()
    done = subprocess.run([sys.executable, "-m", "hyperbatch", "run", spec_file, "--quiet",
                           "--format", "json"], capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr
    manifest: dict = json.loads(done.stdout)
    manifest["cpu_share"] = (cpu() - cpu0) / (time.monotonic() - t0)
    return manifest


#: the share of the CPU a job gets (its process's CPU time over its wall time: other work on a
#: shared machine takes the rest), and the time its engine took to load (the same work in both
#: jobs of a pair: the same weights, the same programs compiled cold), may differ by this much
#: between the two jobs of a pair before the pair is said to have seen two machines
STEADY = (0.8, 1.25)


@pytest.mark.slow
def test_estimate_within_25_percent_of_the_smollm2_manifest(tmp_path):
    """One calibration job in the store, then the estimate of another job of the same shape
    (other records) and that job itself: accelerator seconds and $ within 25%. The CPU is
    shared; both jobs run back to back so they see about the same machine, each as a fresh
    worker (its own compilation cache). A pair that did not -- the second job got another
    share of the CPU than the first, or loaded its engine (the same work) in another time
    (STEADY): other work took the rest -- measured the machine's drift, not the estimate: it is
    run once more, in a fresh store. The second pair counts whatever the machine did."""

    def records(prefix: str, places: list[str]) -> list:
        return [openai_chat(f"{prefix}-{i}", q.format(p), max_tokens=24)
                for i, (q, p) in enumerate((q, p) for p in places for q in QUESTIONS)]  # fmt: skip

    def cold(where, name: str) -> dict:
        """A compilation cache of the job's own: each job compiles its programs, as a fresh
        worker does (else the target reads what the calibration compiled, and loads faster
        than the job it is estimated from for a reason no estimate of a fresh worker has)."""
        return {"engine_options": {"compilation_cache_dir": str(where / f"xla-{name}")}}

    smol = {"model": "smollm2-135m-instruct", "engine": "jax", "batch_size": 16,
            "records_per_shard": 16, "max_seq_len": 128, "sampling": {"temperature": 0.0}}  # fmt: skip
    keys = ("accelerator_seconds", "accelerator_busy_seconds", "accelerator_prefill_seconds",
            "load_seconds", "completion_tokens")  # fmt: skip
    stories = []
    for attempt in range(2):
        where = tmp_path / f"pair-{attempt}"
        where.mkdir()
        calibration = run_in_a_process(
            fake_job(where, "calibration", records("c", PLACES[:8]), **smol, **cold(where, "c"))
        )
        target = fake_job(where, "target", records("t", PLACES[8:]), **smol, **cold(where, "t"))
        est = estimate.estimate(job_spec.load(target))
        assert "measured by 1 earlier job" in est.basis["throughput"]
        m = run_in_a_process(target)

        assert (est.records, est.prompt_tokens, est.cached_tokens) == (
            m["records_in"],
            m["prompt_tokens"],
            m["cached_tokens"],
        )  # the model's own tokenizer and prefix cache, counted without loading the model
        seconds = est.accelerator_seconds.expected / m["accelerator_seconds"]
        dollars = est.cost_usd.expected / m["cost_usd"]
        drifts = (m["cpu_share"] / calibration["cpu_share"],
                  m["load_seconds"] / calibration["load_seconds"])  # fmt: skip
        stories.append(
            f"pair {attempt + 1}: estimate / actual: accelerator seconds {seconds:.3f}, "
            f"$ {dollars:.3f}; completion tokens {est.completion_tokens.expected:.0f} / "
            f"{m['completion_tokens']}; CPU share {calibration['cpu_share']:.2f} -> {m['cpu_share']:.2f}; "
            f"calibration { {k: calibration[k] for k in keys} }, "
            f"target { {k: m[k] for k in keys} }"
        )
        print(stories[-1])
        within = 0.75 <= seconds <= 1.25 and 0.75 <= dollars <= 1.25
        if within or all(STEADY[0] <= d <= STEADY[1] for d in drifts):
            break
    story = "\n".join(stories)
    assert 0.75 <= seconds <= 1.25, story
    assert 0.75 <= dollars <= 1.25, story


def test_a_trigger_honours_the_cap_and_its_default(tmp_path):
    """A new job whose low estimate is above its cap -- its own, or the trigger's default -- is
    rejected (recorded with the estimate, acked); under the cap it is recorded with it."""
    from hyperbatch.jobs.store import JobStore
    from hyperbatch.jobs.triggers.handler import TriggerHandler
    from hyperbatch.jobs.triggers.messages import Delivery

    store_root = str(tmp_path / "out")
    assert CliRunner().invoke(main, ["run", fake_job(tmp_path, "calib", shaped("a", 8)),
                                     "--quiet"]).exit_code == EXIT_OK  # fmt: skip
    (tmp_path / "req.jsonl").write_bytes(jsonl(shaped("b", 8)))
    spec = {"name": "by-message", "task": "chat", "input": str(tmp_path / "req.jsonl"),
            "input_format": "openai", "output": store_root, "model": str(tmp_path / "fake"),
            "engine": "fake",
            "records_per_shard": 4}  # fmt: skip

    def deliver(handler: TriggerHandler, message_id: str, **extra) -> object:
        body = json.dumps({**spec, **extra}).encode()
        return handler.handle(Delivery(message_id, body, {}))

    store = JobStore(store_root)
    strict = TriggerHandler(store, allow=[str(tmp_path)], default_max_cost_usd=1e-12)
    own = deliver(strict, "m-1", max_cost_usd=1e-12)
    assert (own.ack, own.kind) == (True, "rejected")
    assert "below even the low estimate" in own.detail
    defaulted = deliver(strict, "m-2")  # no cap of its own: the trigger's default applies
    assert defaulted.kind == "rejected"
    assert len(store.rejected()) == 2
    assert "max_cost_usd" in store.rejected()[0]["reason"]

    roomy = TriggerHandler(store, allow=[str(tmp_path)], default_max_cost_usd=50.0)
    recorded = deliver(roomy, "m-3")
    assert recorded.kind == "submitted"
    assert store.spec(recorded.job_id).max_cost_usd == 50.0
    kept = deliver(roomy, "m-4", max_cost_usd=7.5)  # its own cap wins over the default
    assert store.spec(kept.job_id).max_cost_usd == 7.5
