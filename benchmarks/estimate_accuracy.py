"""How good is `hyperbatch estimate`? Estimate vs actual for jobs of three shapes, and a capped job.

SmolLM2-135M-Instruct on the JAX engine on this machine's CPU, every job in a process of its
own (as `hyperbatch run` runs it: the engine loads cold). Each shape is measured as a pair in a
fresh job store, back to back, so that both jobs of a pair see about the same machine (this CPU
is shared: its speed drifts, by far more than +-20% when other work runs):

  1. a calibration job (the quickstart's 115 mixed chat requests, at the jobs' batch size
     unless --calibration-batch says otherwise) runs;
  2. the job is estimated -- from the store holding only the calibration job, and from the
     throughput table alone (an empty store) -- then run:
       short-long  short questions, long answers (max_tokens 128)
       long-short  long passages (~250 tokens), one-line answers (max_tokens 8)
       mixed       both kinds and medium ones, shuffled
  3. a capped job (the mixed shape again, as a new job, in shards of 4 records):
       refused     in the calibrated store, with max_cost_usd at half its estimate: its low
                   estimate is above the cap, so it is refused before launch (exit 2);
       stopped     in an empty store (the first job of this model there: its low estimate,
                   one token an answer, is far below what it costs), with max_cost_usd at
                   half what the mixed job cost: it stops (STOPPED_BUDGET, exit 4); the cap,
                   its final cost, records served and left are reported, then it is rerun with
                   4x the cap and finishes from its committed shards.

Prints estimate / actual for accelerator seconds, $ and completion tokens (the $ ratio equals
the seconds ratio: one price), and how much of the CPU each job of a pair got (its process's
CPU time over its wall time: other work on the machine takes the rest) with the ratio adjusted
for it -- estimate / actual had the job got the calibration's share: the estimator's own error
-- and writes everything to --out as JSON.

    python benchmarks/estimate_accuracy.py
    python benchmarks/estimate_accuracy.py --scale 0.5 --out /tmp/estimate_accuracy.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from hyperbatch.jobs import estimate  # noqa: E402
from hyperbatch.jobs import spec as job_spec  # noqa: E402

TOPICS = ["the sea", "a lighthouse", "volcanoes", "bees", "the moon", "a library", "trains",
          "coffee", "winter", "chess", "bread", "rivers", "glaciers", "owls", "deserts", "bridges",
          "the internet", "gardens", "clocks", "maps", "rainbows", "salt", "kites", "caves",
          "forests", "honey", "storms", "islands", "music", "paper", "glass", "wolves"]  # fmt: skip
SENTENCES = [
    "Many people have written about {t}, and each of them noticed something different.",
    "In the old records, {t} appears again and again as a sign of change.",
    "Scientists who study {t} often begin with simple questions about size and time.",
    "Children who see {t} for the first time usually ask where it came from.",
    "There are long stories about {t} in almost every part of the world.",
    "Some say that {t} teaches patience, because nothing about it happens quickly.",
    "The history of {t} is tied to trade, travel and the work of ordinary people.",
    "Artists have painted {t} in bright colours and in the dark tones of evening.",
]


def chat(cid: str, content: str, max_tokens: int) -> dict[str, Any]:
    return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": content}],
                     "max_tokens": max_tokens}}  # fmt: skip


def passage(topic: str, rng: random.Random) -> str:
    sentences = [s.format(t=topic) for s in SENTENCES]
    rng.shuffle(sentences)
    return " ".join(sentences * 2)  # ~250 tokens


def shapes(scale: float, prefix: str, seed: int) -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(seed)
    n = max(4, round(32 * scale))
    topics = [TOPICS[i % len(TOPICS)] for i in range(n)]
    short_long = [chat(f"{prefix}sl-{i}", f"Write a story about {t}.", 128)
                  for i, t in enumerate(topics)]  # fmt: skip
    long_short = [
        chat(f"{prefix}ls-{i}", passage(t, rng) + "\n\nIn one word, what is this text about?", 8)
        for i, t in enumerate(topics)
    ]
    medium = [chat(f"{prefix}md-{i}", f"Give me three facts about {t}.", 48)
              for i, t in enumerate(topics)]  # fmt: skip
    mixed = short_long[: n // 3] + long_short[: n // 3] + medium[: n - 2 * (n // 3)]
    mixed = [{**r, "custom_id": r["custom_id"].replace(prefix, f"{prefix}mx-")} for r in mixed]
    rng.shuffle(mixed)
    return {"short-long": short_long, "long-short": long_short, "mixed": mixed}


def write_job(folder: str, name: str, records: list[dict[str, Any]], store: str,
              **extra: Any) -> str:  # fmt: skip
    data = os.path.join(folder, f"{name}.jsonl")
    with open(data, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    spec = {"name": name, "task": "chat", "input": data, "input_format": "openai",
            "output": store, "model": "smollm2-135m-instruct", "engine": "jax",
            "batch_size": 32, "records_per_shard": 32, "max_seq_len": 512,
            "sampling": {"temperature": 0.0}, **extra}  # fmt: skip
    path = os.path.join(folder, f"{name}.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    return path


def run_job(spec_file: str, *overrides: str) -> tuple[int, dict[str, Any], float, str]:
    """`hyperbatch run` in a process of its own: (exit code, manifest, seconds, stderr); the
    manifest is empty when the run was refused (exit 2), else it gets ``cpu_share``: the CPU
    time the process got over its wall time (2.0 = both cores all along)."""
    args = [sys.executable, "-m", "hyperbatch", "run", spec_file, "--quiet", "--format", "json"]
    for o in overrides:
        args += ["--set", o]
    t0, cpu0 = time.time(), _children_cpu()
    done = subprocess.run(args, capture_output=True, text=True, timeout=3600)
    took, cpu = time.time() - t0, _children_cpu() - cpu0
    if done.returncode not in (0, 2, 4) or (done.returncode == 2 and not overrides):
        raise SystemExit(f"{spec_file} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    manifest = json.loads(done.stdout) if done.returncode != 2 else {}
    if manifest:
        manifest["cpu_share"] = round(cpu / took, 3)
    return done.returncode, manifest, took, done.stderr


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def compare(
    est: estimate.Estimate, m: dict[str, Any], calibration: dict[str, Any]
) -> dict[str, Any]:
    return {
        "estimate_seconds": est.accelerator_seconds.to_dict(1),
        "actual_seconds": m["accelerator_seconds"],
        "seconds_ratio": round(est.accelerator_seconds.expected / m["accelerator_seconds"], 3),
        "estimate_usd": est.cost_usd.to_dict(7),
        "actual_usd": m["cost_usd"],
        "usd_ratio": round(est.cost_usd.expected / m["cost_usd"], 3),
        "in_range": est.cost_usd.low <= m["cost_usd"] <= est.cost_usd.high,
        "completion_tokens": [round(est.completion_tokens.expected), m["completion_tokens"]],
        "prompt_tokens": [est.prompt_tokens, m["prompt_tokens"]],
        "records": m["records_in"],
        "load_seconds": m["load_seconds"],
        "busy_seconds": m["accelerator_busy_seconds"],
        # what the estimate would have been had the job got the calibration's share of the CPU
        # (other work on this machine takes the rest): the estimator's error, not the machine's
        "cpu_share": [calibration["cpu_share"], m["cpu_share"]],
        "share_adjusted_ratio": round(
            est.accelerator_seconds.expected
            / m["accelerator_seconds"]
            * m["cpu_share"]
            / calibration["cpu_share"],
            3,
        ),
    }


def calibrate(
    work: str, store: str, quickstart: list[dict[str, Any]], batch_size: int
) -> dict[str, Any]:
    calib = write_job(work, "calibration", quickstart, store, batch_size=batch_size)
    _, m, took, _ = run_job(calib)
    print(f"  calibration: {m['records_in']} records, {m['accelerator_seconds']:.1f} "
          f"accelerator-s ({m['load_seconds']:.1f} s load + warmup), ${m['cost_usd']:.6f}, "
          f"{took:.0f} s")  # fmt: skip
    return {k: m[k] for k in ("records_in", "accelerator_seconds", "cost_usd", "load_seconds",
                              "accelerator_busy_seconds", "completion_tokens",
                              "cpu_share")}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="records per shape / 32")
    ap.add_argument("--out", default=None, help="write the results here as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the job stores")
    ap.add_argument("--calibration-batch", type=int, default=32,
                    help="the calibration job's batch_size (the jobs': 32); another one also "
                    "measures how the estimate carries a rate across batch sizes")  # fmt: skip
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="hb-estimate-")
    empty = os.path.join(work, "empty")
    os.makedirs(empty)
    report: dict[str, Any] = {"machine": f"{os.cpu_count()} CPUs, shared",
                              "calibration_batch": args.calibration_batch, "jobs": {}}  # fmt: skip
    t0 = time.time()
    with open(os.path.join(ROOT, "examples", "quickstart", "requests.jsonl")) as f:
        quickstart = [json.loads(line) for line in f]

    for name, records in shapes(args.scale, "", 0).items():
        folder = os.path.join(work, name)
        store = os.path.join(folder, "store")
        os.makedirs(folder)
        print(f"{name}:")
        calibration = calibrate(folder, store, quickstart, args.calibration_batch)
        path = write_job(folder, name, records, store)
        spec = job_spec.load(path)
        est = estimate.estimate(spec, root=store)  # the calibration job only
        table = estimate.estimate(spec, root=empty)
        _, m, took, _ = run_job(path)
        row = compare(est, m, calibration)
        row["calibration"] = calibration
        row["table_seconds_ratio"] = round(
            table.accelerator_seconds.expected / m["accelerator_seconds"], 3
        )
        report["jobs"][name] = row
        print(f"  {name} {m['records_in']} records: estimate {row['estimate_seconds']} s vs "
              f"{row['actual_seconds']:.1f} s (x{row['seconds_ratio']}; $ x{row['usd_ratio']} of "
              f"the manifest's ${m['cost_usd']:.6f}); completion tokens "
              f"{row['completion_tokens'][0]} vs {row['completion_tokens'][1]}; CPU share "
              f"{row['cpu_share'][0]} -> {row['cpu_share'][1]}, adjusted "
              f"x{row['share_adjusted_ratio']}; table alone x{row['table_seconds_ratio']}; "
              f"{took:.0f} s")  # fmt: skip

    # the capped job: a new job of the mixed shape, in shards of 4
    capped_records = shapes(args.scale, "cap-", 1)["mixed"]
    calibrated = os.path.join(work, "mixed", "store")
    capped = write_job(work, "capped", capped_records, calibrated, records_per_shard=4,
                       batch_size=16)  # fmt: skip
    est = estimate.estimate(job_spec.load(capped), root=calibrated)
    cap = round(est.cost_usd.expected / 2, 7)
    code, _, _, err = run_job(capped, f"max_cost_usd={cap}")
    refused = {"cap_usd": cap, "estimate_usd": est.cost_usd.to_dict(7), "exit_code": code,
               "message": err.strip().splitlines()[-1].strip()}  # fmt: skip
    print(f"capped, calibrated store: cap ${cap} (estimate ${est.cost_usd.low:.7f} - "
          f"${est.cost_usd.high:.7f}) -> exit {code} (refused before launch)")  # fmt: skip

    fresh = os.path.join(work, "fresh")
    os.makedirs(fresh)
    capped = write_job(work, "capped", capped_records, fresh, records_per_shard=4, batch_size=16)
    est = estimate.estimate(job_spec.load(capped), root=fresh)  # the table: no earlier job
    cap = round(max(report["jobs"]["mixed"]["actual_usd"] / 2, est.cost_usd.low * 1.1), 7)
    code, m, took, _ = run_job(capped, f"max_cost_usd={cap}")
    stop = {
        "cap_usd": cap,
        "estimate_usd": est.cost_usd.to_dict(7),
        "exit_code": code,
        "status": m["status"],
        "final_cost_usd": m["cost_usd"],
        "final_over_cap": round(m["cost_usd"] / cap, 3),
        "records_served": m["records_in"],
        "records_left": m["records_left"],
        "shards_committed": len(m["shards"]),
        "shards_left": m["shards_left"],
    }
    print(f"capped, empty store: cap ${cap} (table estimate ${est.cost_usd.low:.7f} - "
          f"${est.cost_usd.high:.7f}) -> {m['status']} (exit {code}): ${m['cost_usd']:.7f} "
          f"spent, {m['records_in']} records served, {m['records_left']} left; {took:.0f} s")  # fmt: skip
    code, m2, took, _ = run_job(capped, f"max_cost_usd={cap * 4}")
    first = {x["shard"]: x["accelerator_seconds"] for x in m["shards"]}
    # the stopped run's committed shards, kept as they were (not served again)
    kept = sum(1 for x in m2["shards"] if first.get(x["shard"]) == x["accelerator_seconds"])
    stop["rerun"] = {"cap_usd": cap * 4, "exit_code": code, "status": m2["status"],
                     "cost_usd": m2["cost_usd"], "records_in": m2["records_in"],
                     "records_left": m2["records_left"], "attempts": m2["attempts"],
                     "shards_kept": kept}  # fmt: skip
    print(f"  rerun with ${cap * 4:.7f}: {m2['status']}, {m2['records_in']} records, "
          f"${m2['cost_usd']:.7f} in all ({m2['attempts']} attempts); {took:.0f} s")  # fmt: skip
    report["capped"] = {"refused": refused, "stopped": stop}
    report["seconds"] = round(time.time() - t0)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"job stores: {work}")


if __name__ == "__main__":
    main()
